"""hazard.core.text_score (ROUGE-L F-measure through rouge-score) and the report task's metric.

ROUGE-L of a pair: L = length of the longest common subsequence (LCS) of the token lists,
P = L / len(prediction), R = L / len(reference), F = 2PR / (P + R) = 2L / (len_p + len_r).
"""

from __future__ import annotations

import random

import pytest

from hazard.core.answer_kinds import AnswerProblem, Text
from hazard.core.tasks import get_task
from hazard.core.text_score import STEMMING, mean_rouge_l, rouge_l, tokens


def test_tokens_fold_case_drop_punctuation_and_stem():
    assert tokens("Heart size, NORMAL.") == ["heart", "size", "normal"]
    assert STEMMING  # Porter stemming of tokens longer than 3 characters
    assert tokens("opacities; opacity") == ["opac", "opac"]
    assert tokens("enlarged enlargement") == ["enlarg", "enlarg"]


@pytest.mark.parametrize(
    "reference, prediction, expected",
    [
        # 6 and 6 tokens, LCS "the cat on the mat" = 5: P = R = 5/6, F = 5/6
        ("the cat sat on the mat", "the cat lay on the mat", 5 / 6),
        # reference 4 tokens, prediction 2, LCS 2: P = 2/2, R = 2/4, F = 2*1*0.5/1.5 = 2/3
        ("The lung is clear.", "lung clear", 2 / 3),
        # order reversed: LCS 1 of 4 and 4 tokens: P = R = 1/4, F = 1/4
        ("left lower lobe opacity", "opacity lobe lower left", 1 / 4),
        # stemmed alike ("opac", "effus"): 3 of 3 and 3 tokens, F = 1
        ("small opacities, effusion", "small opacity effusions", 1.0),
        # no common token: L = 0, F = 0
        ("no acute findings", "large mass", 0.0),
        # case and punctuation fold away: F = 1
        ("Heart size normal.", "heart SIZE: normal", 1.0),
    ],
)
def test_rouge_l_of_pairs_worked_by_hand(reference, prediction, expected):
    assert rouge_l(reference, prediction) == pytest.approx(expected)


def test_an_unparsed_prediction_scores_zero_and_is_counted():
    # (0 + 1 + 2/3) / 3: the None row stays in the mean (dropping it would give (1 + 2/3) / 2)
    refs = ["heart size normal", "no effusion", "the lung is clear"]
    preds = [None, "no effusion", "lung clear"]
    assert mean_rouge_l(refs, preds) == pytest.approx((0 + 1 + 2 / 3) / 3)
    assert rouge_l("no effusion", "???") == 0.0  # parsed, but no word to compare


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match=r"reference '\.\.\.' has no word for ROUGE-L"):
        rouge_l("...", "anything")
    with pytest.raises(TypeError, match="a reference must be text, not NoneType"):
        rouge_l(None, "anything")
    with pytest.raises(ValueError, match="y_true has 1 items but y_pred has 2"):
        mean_rouge_l(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="zero samples"):
        mean_rouge_l([], [])


def _lcs(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length, by the textbook dynamic programme."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def test_rouge_l_matches_an_independent_lcs_over_random_token_strings():
    rng = random.Random(19)
    vocab = ["a", "b", "c", "d", "e", "f"]  # short words: no stemming, no folding
    for _ in range(300):
        ref = rng.choices(vocab, k=rng.randint(1, 15))
        pred = rng.choices(vocab, k=rng.randint(1, 15))
        lcs = _lcs(ref, pred)
        expected = 2 * lcs / (len(ref) + len(pred))  # = 2PR / (P + R)
        sep = rng.choice([" ", ", ", ". "])
        assert rouge_l(" ".join(ref), sep.join(pred)) == pytest.approx(expected), (ref, pred)


def test_text_kind_reports_rouge_l_and_rejects_a_reference_without_words():
    kind = Text(rouge_l=True)
    preds = [kind.parse(t) for t in ("  lung clear ", " \n")]
    assert preds == ["lung clear", None]
    m = kind.metrics(["The lung is clear.", "heart size normal"], preds)
    assert m["rouge_l"] == pytest.approx((2 / 3 + 0) / 2)  # the unparsed row scores 0
    assert m["parse"].n == 2 and m["parse"].rate == pytest.approx(1 / 2)
    assert "rouge_l" not in Text().metrics(["x"], ["x"])
    with pytest.raises(AnswerProblem, match="has no word"):
        kind.read("--")
    report = get_task("report")
    assert report.answer.check("...") == "has no word (a-z, 0-9) for the ROUGE-L score"
    assert report.answer.metrics(["small effusion"], ["small effusions"])["rouge_l"] == 1.0
