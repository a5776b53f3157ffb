"""A run's state across steps and restarts, and the early-stopping rule (pure Python)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class BestTracker:
    """Tracks the best evaluation of `metric` (higher wins) and evaluations since it.

    An evaluation improves only when it beats the best by more than `min_delta`; a tie keeps
    the earlier checkpoint. `selection_score` ranks non-improving evaluations strictly below the
    best, so Ray's CheckpointConfig (which prefers the later of equal scores) keeps the same
    checkpoint this tracker names.
    """

    min_delta: float = 0.0
    best_value: float | None = None
    best_step: int | None = None
    since_best: int = 0

    def update(self, step: int, value: float | None) -> bool:
        """Record one evaluation; True when it is the new best. None (metric undefined on
        this split) never improves."""
        if value is not None and (
            self.best_value is None or value > self.best_value + self.min_delta
        ):
            self.best_value, self.best_step, self.since_best = value, step, 0
            return True
        self.since_best += 1
        return False

    def selection_score(self, step: int, value: float | None) -> float:
        """The score to report with the checkpoint of the evaluation just recorded."""
        if value is None:
            return -math.inf
        if step == self.best_step or value < self.best_value:
            return value
        return math.nextafter(self.best_value, -math.inf)  # a tie or a gain under min_delta

    def should_stop(self, patience: int | None) -> bool:
        """True after `patience` evaluations without improvement."""
        return patience is not None and self.since_best >= patience


@dataclass
class TrainState:
    """Everything rank 0 saves beside the DeepSpeed state to continue a run where it was."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # passes over the worker's data shard started
    batches_in_epoch: int = 0  # micro-batches consumed in the current epoch
    samples: int = 0  # training samples seen (all ranks)
    skipped: int = 0  # samples skipped for exceeding max_length (all ranks)
    skipped_ids: list[str] = field(default_factory=list)  # the first few, for the report
    resumed_from: list[int] = field(default_factory=list)  # steps the run resumed at
    steps: list[dict] = field(default_factory=list)  # {step, loss, lr, seconds}
    evals: list[dict] = field(default_factory=list)  # {step, accuracy, macro_f1, ...}
    tracker: BestTracker = field(default_factory=BestTracker)
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        data = dict(data)
        data["tracker"] = BestTracker(**data.get("tracker", {}))
        return cls(**data)
