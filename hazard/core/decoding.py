"""How a task is scored at inference: likelihood over its closed answers, or generation.

- `Likelihood()`: rank the task's closed answer set (labels, option letters) by the model's
  likelihood in one forward pass; every answer is valid by construction.
- `Generate(decoding)`: generate text with `Decoding` and read it with the task's parser
  (`hazard.core.answer_kinds`); text that does not parse is counted, never dropped.

`Decoding` is validated when built: greedy (`do_sample=False`) takes no temperature or top-p;
sampling needs temperature > 0 and 0 < top_p <= 1; repetition_penalty > 0; max_new_tokens is a
whole number >= 1. `transformers_kwargs()` / `vllm_kwargs()` spell it for `generate()` and for
vLLM's `SamplingParams` (greedy there is temperature 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


@dataclass(frozen=True)
class Decoding:
    """Decoding settings for generated answers (validation: module docstring)."""

    do_sample: bool = False
    temperature: float | None = None  # sampling only; 1.0 when sampling and unset
    top_p: float | None = None  # sampling only; 1.0 when sampling and unset
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be true or false, got {self.do_sample!r}")
        if not self.do_sample:
            for name in ("temperature", "top_p"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name} applies to sampling only: set do_sample=True or leave {name} "
                        "unset (greedy decoding)"
                    )
        else:
            temperature = 1.0 if self.temperature is None else self.temperature
            object.__setattr__(self, "temperature", _positive("temperature", temperature))
            top_p = 1.0 if self.top_p is None else _positive("top_p", self.top_p)
            if top_p > 1:
                raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
            object.__setattr__(self, "top_p", top_p)
        _positive("repetition_penalty", self.repetition_penalty)
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_new_tokens must be a whole number >= 1, got {n!r}")

    def transformers_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `model.generate()`."""
        out: dict[str, Any] = {
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
            "max_new_tokens": self.max_new_tokens,
        }
        if self.do_sample:
            out |= {"temperature": self.temperature, "top_p": self.top_p}
        return out

    def vllm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `vllm.SamplingParams` (greedy: temperature 0)."""
        return {
            "temperature": self.temperature if self.do_sample else 0.0,
            "top_p": self.top_p if self.do_sample else 1.0,
            "repetition_penalty": self.repetition_penalty,
            "max_tokens": self.max_new_tokens,
        }


@dataclass(frozen=True)
class Likelihood:
    """Score by likelihood over the task's closed answer set (valid by construction)."""

    mode = "likelihood"


@dataclass(frozen=True)
class Generate:
    """Score by generating text with `decoding`, read by the task's parser."""

    decoding: Decoding = field(default_factory=Decoding)
    mode = "generate"


Inference = Likelihood | Generate
