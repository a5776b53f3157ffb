"""Each row's task in a `task: mixed` data job: named by a row key and mapped, or inferred.

A mixed job (`DataConfig.task == "mixed"`, formats flare and llava) gives every row the task
that `task_of` returns, recorded in the row's `task` column, and checks its answer against that
task's kind (`pipelines.sources.check_answer`).

- Named (`source.task_field`, flare default `TaskType`): the row's value, normalised (lower
  case; `_` and `-` as spaces; spaces collapsed, as FLARE's baseline reads TaskType), is looked
  up in `source.task_map` over the format's defaults (`FLARE_TASKS` for flare), then taken as a
  registered task name. A missing value or one mapped nowhere: RowProblem `unknown_task`
  naming the value.
- Inferred (llava without `task_field`), from the reference answer's shape, first match wins:
  JSON boxes that `grounding` reads -> `grounding`; a whole number -> `counting`; another
  number -> `regression`; one option letter (A-D) when the question lists lettered options
  (`A.`, `A)` or `(A)` at a line start, A and B at least) -> `multiple_choice`; else `vqa`.
  An unlabelled row (no answer) cannot be inferred: `unknown_task`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hazard.core.tasks import TASKS, TaskSpec, get_task

UNKNOWN_TASK = "unknown_task"

FLARE_TASKS: dict[str, str] = {
    "classification": "classification",
    "multi label classification": "multi_label",
    "detection": "grounding",
    "instance detection": "instance_detection",
    "cell counting": "counting",
    "counting": "counting",
    "regression": "regression",
    "report generation": "report",
}
"""FLARE 2025's TaskType values (normalised) -> registered tasks (its seven task types)."""

DEFAULT_FIELDS: dict[str, str | None] = {"flare": "TaskType", "llava": None}
DEFAULT_MAPS: dict[str, Mapping[str, str]] = {"flare": FLARE_TASKS, "llava": {}}

_NUMBER_WHOLE = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+\.[0-9]+")
_OPTION = re.compile(r"^\s*(?:\(([A-D])\)|([A-D])[.)])", re.MULTILINE)


class UnknownTask(ValueError):
    """A row whose task cannot be named or inferred; the message is the quarantine detail."""


def normalise(value: str) -> str:
    """A task type value as it is matched: lower case, `_`/`-` as spaces, spaces collapsed."""
    return " ".join(value.lower().replace("_", " ").replace("-", " ").split())


def task_options(fmt: str, task_field: str | None, task_map: Mapping[str, str]) -> dict[str, Any]:
    """The `Source.options` entries of a mixed job: its task field and normalised map."""
    merged = {normalise(k): v for k, v in DEFAULT_MAPS.get(fmt, {}).items()}
    merged.update({normalise(k): v for k, v in task_map.items()})
    field = task_field if task_field is not None else DEFAULT_FIELDS.get(fmt)
    return {"task_field": field, "task_map": merged}


def named_task(value: Any, field: str, task_map: Mapping[str, str]) -> TaskSpec:
    """The task a row's `field` value names; UnknownTask otherwise."""
    if not isinstance(value, str) or not value.strip():
        got = "no value" if value is None else f"{type(value).__name__} {value!r}"
        raise UnknownTask(f"{field} is {got}; expected a task type")
    key = normalise(value)
    name = task_map.get(key, key.replace(" ", "_"))
    if name not in TASKS:
        known = sorted(set(task_map) | set(TASKS))
        raise UnknownTask(
            f"{field} {value!r} maps to no registered task (set source.task_map; known: "
            f"{', '.join(known)})"
        )
    return get_task(name)


def _has_lettered_options(question: str) -> bool:
    letters = {a or b for a, b in _OPTION.findall(question)}
    return {"A", "B"} <= letters


def inferred_task(question: str, answer: str | None) -> TaskSpec:
    """The task a row's last question and reference answer show (module docstring)."""
    if answer is None:
        raise UnknownTask("an unlabelled row's task cannot be inferred from its answer")
    text = answer.strip()
    if text[:1] in "[{" and get_task("grounding").answer.check(text) is None:
        return get_task("grounding")
    if _NUMBER_WHOLE.fullmatch(text):
        return get_task("counting")
    if _NUMBER.fullmatch(text):
        return get_task("regression")
    if len(text) == 1 and text in "ABCD" and _has_lettered_options(question):
        return get_task("multiple_choice")
    return get_task("vqa")


def task_of(
    sample: Mapping[str, Any], options: Mapping[str, Any], question: str, answer: str | None
) -> TaskSpec:
    """The task of one row of a mixed job (`options`: the Source's, from `task_options`)."""
    field = options["task_field"]
    if field is None:
        return inferred_task(question, answer)
    return named_task(sample.get(field), field, options["task_map"])
