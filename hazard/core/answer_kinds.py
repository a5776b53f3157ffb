"""Kinds of answer: how a reference is read, a generated text parsed and predictions scored.

One object per kind; a task (`hazard.core.tasks.TaskSpec`) holds one. Every kind has:

- `choices`: its closed answer set (label and letter kinds; None otherwise), what likelihood
  scoring ranks;
- `read(answer)`: a REFERENCE answer string as its value, or `AnswerProblem` whose message
  completes "'<answer>' ..." (the data job quarantines the row with it); `check(answer)` gives
  that message or None;
- `parse(text)`: a GENERATED text as a value of the same form, None when it does not parse
  (parsers in `hazard.core.answers`; never a default);
- `metrics(references, predictions)`: figures over read references and parsed predictions
  (None = unparsed), through the metric modules; always with `parse`, the parse-success rate
  (`hazard.core.parse_rate.ParseRate`);
- `format(value)`: a read or parsed value as its canonical text, which `parse` reads back to
  the same value (what predictions files store); `same(reference, prediction)`: whether a
  parsed prediction equals the reference (order-free for label sets and boxes);
- `headline(metrics)`: (name, value, higher is better) of the one figure a comparison table
  shows for the kind (accuracy, F1, MAE, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hazard.core.answers import (
    Boxes as BoxAnswer,
)
from hazard.core.answers import (
    group_boxes,
    parse_boxes,
    parse_choice,
    parse_labels,
    parse_number,
    parse_score,
)
from hazard.core.detection import check_box, detection_report
from hazard.core.metrics import check_lengths, classification_report, micro_f1
from hazard.core.multilabel import multilabel_report
from hazard.core.parse_rate import parse_success
from hazard.core.regression import numeric_report
from hazard.core.text_score import mean_rouge_l
from hazard.core.text_score import tokens as text_tokens


class AnswerProblem(ValueError):
    """A reference answer that is not valid for its kind; the message completes "'<answer>' ..."."""


class AnswerKind:
    """Base of the kinds: `check` from `read`; subclasses define the rest (module docstring)."""

    kind: ClassVar[str]
    choices: tuple[str, ...] | None = None

    def read(self, answer: str) -> Any:
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def metrics(self, references: Sequence[Any], predictions: Sequence[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def format(self, value: Any) -> str:
        """`value` as the canonical text `parse` reads back (module docstring)."""
        return str(value)

    def same(self, reference: Any, prediction: Any) -> bool:
        """Whether parsed `prediction` (None: unparsed, never the same) equals `reference`."""
        return prediction is not None and reference == prediction

    def headline(self, metrics: dict[str, Any]) -> tuple[str, float | None, bool]:
        """(name, value, higher is better) of the kind's headline figure in `metrics`."""
        raise NotImplementedError

    def check(self, answer: str) -> str | None:
        """What is wrong with reference `answer` (completing "'<answer>' ..."), or None."""
        try:
            self.read(answer)
        except AnswerProblem as e:
            return str(e)
        return None


def _closed(values: Sequence[str], what: str) -> tuple[str, ...]:
    out = tuple(values)
    if not out or len(set(out)) != len(out) or not all(isinstance(v, str) and v for v in out):
        raise ValueError(f"{what} must be distinct non-empty strings, got {list(values)!r}")
    return out


def _label_metrics(refs, preds, labels: Sequence[str]) -> dict[str, Any]:
    return {
        **classification_report(refs, preds, labels),
        "micro_f1": micro_f1(refs, preds, labels),
        "parse": parse_success(preds),
    }


@dataclass(frozen=True)
class Label(AnswerKind):
    """One label of a closed set, or of an open set the data defines (`labels=None`).

    Closed: a reference must be exactly one of `labels`; generated text is read by `parser`
    (default: exactly one label mentioned, `parse_labels`). Open: any reference is a label;
    generated text is one label item. Metrics: accuracy, balanced accuracy, macro/micro F1
    over `labels` (open: the labels of the references)."""

    labels: tuple[str, ...] | None = None
    parser: Callable[[str], str | None] | None = None
    kind: ClassVar[str] = "label"

    def __post_init__(self) -> None:
        if self.labels is not None:
            object.__setattr__(self, "labels", _closed(self.labels, "labels"))
        elif self.parser is not None:
            raise ValueError("a parser needs the closed labels it reads")

    @property
    def choices(self) -> tuple[str, ...] | None:  # type: ignore[override]
        return self.labels

    def read(self, answer: str) -> str:
        if self.labels is not None and answer not in self.labels:
            raise AnswerProblem(f"is not one of {', '.join(self.labels)}")
        return answer

    def parse(self, text: str) -> str | None:
        if self.parser is not None:
            return self.parser(text)
        found = parse_labels(text, self.labels)
        return found[0] if found is not None and len(found) == 1 else None

    def metrics(self, references, predictions):
        return _label_metrics(references, predictions, self.labels or sorted(set(references)))

    def headline(self, metrics):
        return "balanced_accuracy", metrics["balanced_accuracy"], True


@dataclass(frozen=True)
class Letter(AnswerKind):
    """An option letter (multiple choice); `letters` such as "ABCD". Read by `parse_choice`;
    metrics as for labels, over the letters."""

    letters: str = "ABCD"
    kind: ClassVar[str] = "letter"

    def __post_init__(self) -> None:
        if not self.letters.isalpha() or not self.letters.isupper():
            raise ValueError(f"letters must be upper-case letters, got {self.letters!r}")
        _closed(list(self.letters), "letters")

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.letters)

    def read(self, answer: str) -> str:
        if answer not in self.choices:
            raise AnswerProblem(f"is not one of the options {', '.join(self.letters)}")
        return answer

    def parse(self, text: str) -> str | None:
        return parse_choice(text, self.letters)

    def metrics(self, references, predictions):
        return _label_metrics(references, predictions, self.choices)

    def headline(self, metrics):
        return "accuracy", metrics["accuracy"], True


_LIST_SEP = re.compile(r"\s*[,;]\s*")


@dataclass(frozen=True)
class Labels(AnswerKind):
    """A set of labels (multi-label); from a closed list, or open (`labels=None`).

    A reference lists its labels separated by commas or semicolons (`none` is the empty set);
    each once, each in `labels` when closed. Read by `parse_labels`; metrics by
    `multilabel_report` (micro/macro/samples F1)."""

    labels: tuple[str, ...] | None = None
    kind: ClassVar[str] = "labels"

    def __post_init__(self) -> None:
        if self.labels is not None:
            object.__setattr__(self, "labels", _closed(self.labels, "labels"))

    def read(self, answer: str) -> tuple[str, ...]:
        if answer.strip().lower() == "none":
            return ()
        items = _LIST_SEP.split(answer.strip())
        if any(not i for i in items):
            raise AnswerProblem("has an empty label in its list")
        repeated = sorted({i for i in items if items.count(i) > 1})
        if repeated:
            raise AnswerProblem(f"repeats {', '.join(repeated)}")
        unknown = [i for i in items if self.labels is not None and i not in self.labels]
        if unknown:
            known = ", ".join(self.labels or ())
            raise AnswerProblem(f"has unknown label(s) {', '.join(unknown)}; expected from {known}")
        return tuple(items)

    def parse(self, text: str) -> tuple[str, ...] | None:
        return parse_labels(text, self.labels)

    def format(self, value: Sequence[str]) -> str:
        return ", ".join(value) if value else "none"

    def same(self, reference, prediction) -> bool:
        return prediction is not None and set(reference) == set(prediction)

    def metrics(self, references, predictions):
        return multilabel_report(references, predictions, self.labels)

    def headline(self, metrics):
        return "micro_f1", metrics["micro_f1"], True


@dataclass(frozen=True)
class Number(AnswerKind):
    """A count (`whole`: digits only, 0 or more) or a regression value. Read by
    `parse_number`; metrics by `numeric_report` (MAE over parsed answers, Pearson, Spearman,
    with the parse rate beside them: a number has no worst error to charge a failure with)."""

    whole: bool = False
    kind: ClassVar[str] = "number"

    def read(self, answer: str) -> float | int:
        if self.whole:
            if not re.fullmatch(r"[0-9]+", answer):
                raise AnswerProblem("is not a whole number (counting)")
            return int(answer)
        if not re.fullmatch(r"-?[0-9]+(?:\.[0-9]+)?", answer):
            raise AnswerProblem("is not a number")
        return float(answer)

    def parse(self, text: str) -> float | int | None:
        return parse_number(text, whole=self.whole)

    def format(self, value: float | int) -> str:
        return _number_text(value)

    def metrics(self, references, predictions):
        return numeric_report(references, predictions, unparsed_error=None)

    def headline(self, metrics):
        return "mae", metrics["mae"], False


@dataclass(frozen=True)
class Score(AnswerKind):
    """A score on a scale `low`..`high` (inclusive), e.g. a 1-10 safety rating. References and
    generated text are both read by `parse_score`; metrics by `numeric_report`, an unparsed
    answer charged the scale's width (the worst error a parsed one could make)."""

    low: int = 1
    high: int = 10
    kind: ClassVar[str] = "score"

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"a score scale needs low < high, got {self.low}..{self.high}")

    def read(self, answer: str) -> float:
        value = self.parse(answer)
        if value is None:
            raise AnswerProblem(f"holds no score from {self.low} to {self.high}")
        return value

    def parse(self, text: str) -> float | None:
        return parse_score(text, (self.low, self.high))

    def format(self, value: float) -> str:
        return _number_text(value)

    def metrics(self, references, predictions):
        return numeric_report(references, predictions, unparsed_error=self.high - self.low)

    def headline(self, metrics):
        return "mae", metrics["mae"], False


_BOX_FORM = 'not JSON boxes ([x1, y1, x2, y2], a list of them or [{"bbox_2d": ..., "label": ...}])'


@dataclass(frozen=True)
class BoxList(AnswerKind):
    """Boxes [x1, y1, x2, y2] in 0-1000; with `labelled`, a mapping label -> boxes (instance
    detection: every box needs a label). A reference is JSON: one box, a list of boxes, or
    Qwen2.5-VL's `[{"bbox_2d": [...], "label": "..."}]` (labels dropped unless `labelled`); `[]`
    is no boxes. Read by `parse_boxes`; metrics by `detection_report` at `thresholds`."""

    labelled: bool = False
    thresholds: tuple[float, ...] = (0.5,)
    kind: ClassVar[str] = "boxes"

    def __post_init__(self) -> None:
        if not self.thresholds or not all(0 < t <= 1 for t in self.thresholds):
            raise ValueError(f"IoU thresholds must lie in (0, 1], got {self.thresholds!r}")

    def read(self, answer: str) -> BoxAnswer:
        try:
            value = json.loads(answer)
        except ValueError:
            raise AnswerProblem(f"is {_BOX_FORM}") from None
        if not isinstance(value, list):
            raise AnswerProblem(f"is {_BOX_FORM}")
        if len(value) == 4 and not any(isinstance(v, list | dict) for v in value):
            value = [value]
        pairs: list[tuple[Any, Any]] = []
        for item in value:
            if isinstance(item, dict):
                if "bbox_2d" not in item or not isinstance(item.get("label"), str | None):
                    raise AnswerProblem(f"is {_BOX_FORM}")
                pairs.append((item.get("label"), item["bbox_2d"]))
            else:
                pairs.append((None, item))
        if self.labelled and any(label is None for label, _ in pairs):
            raise AnswerProblem("has a box without a label")
        try:
            return group_boxes([(label, check_box(box)) for label, box in pairs], self.labelled)
        except ValueError as e:
            raise AnswerProblem(f"has a bad box: {e}") from None

    def parse(self, text: str) -> BoxAnswer | None:
        return parse_boxes(text, labelled=self.labelled)

    def format(self, value: BoxAnswer) -> str:
        if isinstance(value, dict):
            items = [{"bbox_2d": _box_list(b), "label": k} for k, bs in value.items() for b in bs]
            return json.dumps(items)
        return json.dumps([_box_list(b) for b in value])

    def same(self, reference, prediction) -> bool:
        if prediction is None:
            return False
        if isinstance(reference, dict) != isinstance(prediction, dict):
            return False
        if isinstance(reference, dict):
            return reference.keys() == prediction.keys() and all(
                sorted(map(tuple, reference[k])) == sorted(map(tuple, prediction[k]))
                for k in reference
            )
        return sorted(map(tuple, reference)) == sorted(map(tuple, prediction))

    def metrics(self, references, predictions):
        return detection_report(predictions, references, thresholds=self.thresholds)

    def headline(self, metrics):
        t = self.thresholds[0]
        return f"f1@{t:g}", metrics["by_threshold"][t].f1, True


@dataclass(frozen=True)
class Text(AnswerKind):
    """Free text (VQA answers, reports). A reference is valid unless `validate` (a function
    returning what is wrong, completing "'<answer>' ...", or None) says otherwise. A generated
    text parses unless it is blank. Metrics: the parse rate, the mean length in words of parsed
    answers, with `exact` the share that equal their reference (case and spaces folded;
    unparsed answers count as wrong), and with `rouge_l` the mean ROUGE-L F-measure
    (`hazard.core.text_score`) over the rows, an unparsed answer scoring 0 (counted, never
    dropped); a reference without a word ROUGE-L can compare is then invalid."""

    validate: Callable[[str], str | None] | None = field(default=None, compare=False)
    exact: bool = False
    rouge_l: bool = False
    kind: ClassVar[str] = "text"

    def read(self, answer: str) -> str:
        problem = self.validate(answer) if self.validate is not None else None
        if problem:
            raise AnswerProblem(problem)
        if self.rouge_l and not text_tokens(answer):
            raise AnswerProblem("has no word (a-z, 0-9) for the ROUGE-L score")
        return answer

    def parse(self, text: str) -> str | None:
        return text.strip() or None

    def same(self, reference, prediction) -> bool:
        return prediction is not None and _fold(prediction) == _fold(reference)

    def headline(self, metrics):
        for name in ("rouge_l", "exact_match"):
            if name in metrics:
                return name, metrics[name], True
        return "parse_rate", metrics["parse"].rate, True

    def metrics(self, references, predictions):
        check_lengths(references, predictions)
        parse = parse_success(predictions)
        words = [len(p.split()) for p in predictions if p is not None]
        out: dict[str, Any] = {
            "n": parse.n,
            "parse": parse,
            "mean_words": sum(words) / len(words) if words else None,
        }
        if self.exact:
            same = [
                p is not None and _fold(p) == _fold(r)
                for r, p in zip(references, predictions, strict=True)
            ]
            out["exact_match"] = sum(same) / len(same)
        if self.rouge_l:
            out["rouge_l"] = mean_rouge_l(references, predictions)
        return out


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def _number_text(value: float | int) -> str:
    """A number as plain decimal text (no exponent; whole floats without ".0")."""
    if float(value).is_integer():
        return str(int(value))
    return format(float(value), ".12f").rstrip("0").rstrip(".")


def _box_list(box: Sequence[float]) -> list[float | int]:
    return [int(v) if float(v).is_integer() else float(v) for v in box]
