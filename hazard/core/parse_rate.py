"""Parse success of generated answers (pure Python).

A parsed answer is None when the parser could not read one (`hazard.core.answers` never
guesses a default). Every metric module of `hazard.core` takes such None answers as input and
says how it counts them; this module holds the one count they share:

- `parse_success(answers) -> ParseRate(n, parsed, rate)`: `rate = parsed / n`.
  Only None counts as "did not parse": an empty list (e.g. "no boxes"), 0 or "" is an answer.
  Empty input raises ValueError (a rate over nothing is not 0 or 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple


class ParseRate(NamedTuple):
    n: int  # answers
    parsed: int  # answers that are not None
    rate: float  # parsed / n


def parse_success(answers: Sequence[Any]) -> ParseRate:
    """How many of `answers` parsed (are not None), and their share."""
    n = len(answers)
    if n == 0:
        raise ValueError("cannot compute a parse-success rate over zero answers")
    parsed = sum(a is not None for a in answers)
    return ParseRate(n=n, parsed=parsed, rate=parsed / n)
