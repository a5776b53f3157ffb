"""Task specs and their prompts.

A task says what the model is asked and what a valid answer is. The flagship task is
`corridor_risk` (five labels, docs/architecture.md); the others are the shapes Qwen2.5-VL
fine-tuning projects use and are carried through the data pipeline with the same schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from hazard.core.answers import parse_score
from hazard.core.labels import RISK_LABELS

CORRIDOR_RISK_PROMPT = (
    "Grade the fire risk in this picture. Answer with one label: " + ", ".join(RISK_LABELS) + "."
)


@dataclass(frozen=True)
class TaskSpec:
    """A task: its name, the prompt template and the closed answer set (None = free text).

    A free-text task may check its answers: `answer_check(answer)` says what is wrong with one
    (completing "<answer> ..."), or None when it is valid; without it any text is valid."""

    name: str
    prompt: str
    labels: tuple[str, ...] | None = None
    multi_image: bool = False
    answer_check: Callable[[str], str | None] | None = None


def _score_problem(answer: str) -> str | None:
    return None if parse_score(answer) is not None else "holds no score from 1 to 10"


def _count_problem(answer: str) -> str | None:
    return None if re.fullmatch(r"[0-9]+", answer) else "is not a whole number (counting)"


TASKS: dict[str, TaskSpec] = {
    "corridor_risk": TaskSpec("corridor_risk", CORRIDOR_RISK_PROMPT, RISK_LABELS),
    "high_risk_binary": TaskSpec(
        "high_risk_binary",
        "Is there a high fire risk in this picture? Answer with one label: high_risk, other.",
        ("other", "high_risk"),
    ),
    "multiple_choice": TaskSpec(
        "multiple_choice",
        "Answer with the letter of the correct option.",
        ("A", "B", "C", "D"),
        True,
    ),
    "classification": TaskSpec("classification", "Classify the picture.", None),
    # free-form visual question answering (chat data): prompt and answer come from the source
    "vqa": TaskSpec("vqa", "Answer the question about the picture.", None, True),
    "score": TaskSpec(
        "score", "Rate the safety of this picture from 1 to 10.", answer_check=_score_problem
    ),
    "counting": TaskSpec(
        "counting",
        "How many objects are there? Answer with a number.",
        answer_check=_count_problem,
    ),
    "grounding": TaskSpec(
        "grounding", "Give the box of the object as [x1, y1, x2, y2] in 0-1000.", None
    ),
}


def get_task(name: str) -> TaskSpec:
    """The TaskSpec called `name`; ValueError naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None
