"""Task specs and the registry of tasks.

A task says what the model is asked (its prompt template, or the row's own turns), what its
answer is (a kind from `hazard.core.answer_kinds`: how a reference is read, a generated text
parsed and predictions scored) and how it is scored at inference (`hazard.core.decoding`:
likelihood over a closed answer set, or generation). The flagship task is `corridor_risk` (five
labels, docs/architecture.md); the others are the shapes Qwen2.5-VL fine-tuning projects use.

Adding a task is one `register(TaskSpec(...))` below plus its tests; nothing elsewhere branches
on a task's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from hazard.core.answer_kinds import (
    AnswerKind,
    BoxList,
    Label,
    Labels,
    Letter,
    Number,
    Score,
    Text,
)
from hazard.core.answers import parse_risk_level
from hazard.core.decoding import Decoding, Generate, Inference, Likelihood
from hazard.core.labels import RISK_LABELS

CORRIDOR_RISK_PROMPT = (
    "Grade the fire risk in this picture. Answer with one label: " + ", ".join(RISK_LABELS) + "."
)

PromptSource = Literal["template", "row"]
MIXED = "mixed"  # not a task: a data job, training run or bundle whose rows are of several tasks


@dataclass(frozen=True)
class TaskSpec:
    """A task: name, prompt template, answer kind, inference and where its prompt comes from.

    - `answer`: the kind of answer; `labels` (its closed answer set, None when open) and
      `answer_check(answer)` (what is wrong with a reference answer, completing "<answer> ...",
      or None) are derived from it. Given no `answer`, closed `labels` make a `Label` kind and
      an `answer_check` (or nothing) a `Text` kind.
    - `inference`: `Likelihood()` (default for kinds with a closed answer set) or
      `Generate(Decoding(...))` (the default otherwise; the kind's parser reads the text).
    - `prompt_source`: "template" (the model is asked `prompt`) or "row" (the row's own system
      text and user turns, the `conversation` column; `prompt` is then what a row without turns
      is asked).
    """

    name: str
    prompt: str
    labels: tuple[str, ...] | None = None
    multi_image: bool = False
    answer_check: Callable[[str], str | None] | None = field(default=None, compare=False)
    answer: AnswerKind | None = None
    inference: Inference | None = None
    prompt_source: PromptSource = "template"

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"a task name is an identifier, got {self.name!r}")
        kind = self.answer
        if kind is None:
            kind = Label(self.labels) if self.labels is not None else Text(self.answer_check)
        elif self.labels is not None or self.answer_check is not None:
            raise ValueError(
                f"task {self.name}: give `answer` or `labels`/`answer_check`, not both"
            )
        inference = self.inference
        if inference is None:
            inference = Likelihood() if kind.choices is not None else Generate(Decoding())
        if isinstance(inference, Likelihood) and kind.choices is None:
            raise ValueError(
                f"task {self.name}: likelihood scoring needs a closed answer set; "
                f"a {kind.kind} answer is scored with Generate(Decoding(...))"
            )
        if not isinstance(inference, Likelihood | Generate):
            raise ValueError(f"task {self.name}: inference must be Likelihood() or Generate(...)")
        if self.prompt_source not in ("template", "row"):
            raise ValueError(
                f"task {self.name}: prompt_source must be 'template' or 'row', "
                f"got {self.prompt_source!r}"
            )
        object.__setattr__(self, "answer", kind)
        object.__setattr__(self, "labels", kind.choices)
        object.__setattr__(self, "answer_check", kind.check)
        object.__setattr__(self, "inference", inference)

    @property
    def ranks_fixed_prompt(self) -> bool:
        """Asked its template prompt and ranked by likelihood over its closed answer set: what
        the label engines (`hazard.model.engines`, vLLM included) score."""
        return self.prompt_source == "template" and isinstance(self.inference, Likelihood)


TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add `spec` to TASKS; ValueError when a task of that name is registered already."""
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is registered already")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The TaskSpec called `name`; ValueError naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


def _generate(max_new_tokens: int, repetition_penalty: float = 1.0) -> Generate:
    return Generate(Decoding(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty))


register(
    TaskSpec(
        "corridor_risk",
        CORRIDOR_RISK_PROMPT,
        answer=Label(RISK_LABELS, parser=parse_risk_level),
        inference=Likelihood(),
    )
)
register(
    TaskSpec(
        "high_risk_binary",
        "Is there a high fire risk in this picture? Answer with one label: high_risk, other.",
        answer=Label(("other", "high_risk")),
        inference=Likelihood(),
    )
)
register(  # MAC-style rows carry their own question and options
    TaskSpec(
        "multiple_choice",
        "Answer with the letter of the correct option.",
        multi_image=True,
        answer=Letter("ABCD"),
        inference=Likelihood(),
        prompt_source="row",
    )
)
register(  # labels come from the data (e.g. FLARE), so the set is open and read from text
    TaskSpec(
        "classification",
        "Classify the picture.",
        answer=Label(None),
        inference=_generate(16),
        prompt_source="row",
    )
)
register(
    TaskSpec(
        "multi_label",
        "Which of the listed labels apply to the picture? Answer with them, separated by commas.",
        answer=Labels(None),
        inference=_generate(64),
        prompt_source="row",
    )
)
register(  # free-form visual question answering (chat data): prompt and answer from the source
    TaskSpec(
        "vqa",
        "Answer the question about the picture.",
        multi_image=True,
        answer=Text(exact=True),
        inference=_generate(128),
        prompt_source="row",
    )
)
register(
    TaskSpec(
        "score",
        "Rate the safety of this picture from 1 to 10.",
        answer=Score(1, 10),
        inference=_generate(32),
    )
)
register(
    TaskSpec(
        "counting",
        "How many objects are there? Answer with a number.",
        answer=Number(whole=True),
        inference=_generate(16),
        prompt_source="row",
    )
)
register(
    TaskSpec(
        "grounding",
        "Give the box of the object as [x1, y1, x2, y2] in 0-1000.",
        answer=BoxList(),
        inference=_generate(128),
        prompt_source="row",
    )
)
register(  # FLARE's "Report Generation": ROUGE-L F-measure, parse rate and mean length
    TaskSpec(
        "report",
        "Write a report of what the picture shows.",
        answer=Text(rouge_l=True),
        inference=_generate(512, repetition_penalty=1.05),
        prompt_source="row",
    )
)
register(  # FLARE's "Instance Detection": a label per box (e.g. chromosome identity), F1 at 0.3/0.5
    TaskSpec(
        "instance_detection",
        'Give each object\'s box as [{"bbox_2d": [x1, y1, x2, y2], "label": "..."}] in 0-1000.',
        answer=BoxList(labelled=True, thresholds=(0.3, 0.5)),
        inference=_generate(512),
        prompt_source="row",
    )
)
register(  # FLARE's "Regression": a measured value, not a whole count; MAE
    TaskSpec(
        "regression",
        "What is the measured value? Answer with a number.",
        answer=Number(whole=False),
        inference=_generate(16),
        prompt_source="row",
    )
)
