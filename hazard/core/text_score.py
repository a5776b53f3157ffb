"""The report text score: ROUGE-L F-measure from Google's `rouge-score` (ROUGE-1.5.5 in Python).

Tokenisation is rouge-score's default tokenizer: lower-case, every run of characters outside
`a-z0-9` becomes a space (punctuation, and also accented and non-Latin letters, are dropped),
split on spaces, then Porter stemming of tokens longer than 3 characters. Stemming is on because
a report's inflections name the same finding ("opacities" / "opacity", "enlarged" /
"enlargement") and because ROUGE-1.5.5's `-m`, the setting of published ROUGE figures, stems too.

ROUGE-L of one pair: with L the length of the longest common subsequence of the token lists,
P = L / len(prediction), R = L / len(reference), F = 2PR / (P + R) (0 when L = 0). A reference
without a single token has no score (ValueError; `tokens` lets a data job reject such a
reference first); an unparsed (None) prediction, or one without tokens, scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from hazard.core.metrics import check_lengths

STEMMING = True


@cache
def _scorer():
    """(tokenizer, scorer), the scorer using that tokenizer. Imported on first use: nltk (the
    stemmer) takes a moment to import, and most users of hazard.core never score a report."""
    from rouge_score import rouge_scorer, tokenizers

    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=STEMMING)
    return tokenizer, rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizer)


def tokens(text: str) -> list[str]:
    """`text` as the tokens ROUGE-L compares (the module docstring's tokenisation)."""
    return _scorer()[0].tokenize(text)


def rouge_l(reference: str, prediction: str | None) -> float:
    """ROUGE-L F-measure of `prediction` against `reference`, in [0, 1]; None scores 0."""
    if not isinstance(reference, str):
        raise TypeError(f"a reference must be text, not {type(reference).__name__}")
    if not tokens(reference):
        raise ValueError(
            f"reference {reference!r} has no word for ROUGE-L (its tokenizer keeps a-z and 0-9)"
        )
    if prediction is None:
        return 0.0
    return float(_scorer()[1].score(reference, prediction)["rougeL"].fmeasure)


def mean_rouge_l(references: Sequence[str], predictions: Sequence[str | None]) -> float:
    """Mean ROUGE-L F-measure over the pairs; an unparsed (None) prediction counts as 0."""
    check_lengths(references, predictions)
    scores = [rouge_l(r, p) for r, p in zip(references, predictions, strict=True)]
    return sum(scores) / len(scores)
