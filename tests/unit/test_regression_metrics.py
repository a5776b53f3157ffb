"""hazard.core.regression against hand-computed values and direct O(n^2) rank correlation."""

from __future__ import annotations

import math
import random

import pytest

from hazard.core.parse_rate import ParseRate
from hazard.core.regression import (
    average_ranks,
    mean_absolute_error,
    numeric_report,
    pearson,
    spearman,
)


def approx(x: float) -> object:
    return pytest.approx(x, abs=1e-12)


def test_mae_of_counts_by_hand() -> None:
    # |3-5| + |0-0| + |12-10| = 4 over 3 images
    assert mean_absolute_error([3, 0, 12], [5, 0, 10]) == approx(4 / 3)
    assert mean_absolute_error([2.5], [2.5]) == 0.0


def test_average_ranks_share_ties() -> None:
    # sorted 10, 10, 20, 20, 30: the 10s span ranks 1-2 -> 1.5, the 20s 3-4 -> 3.5, 30 -> 5
    assert average_ranks([30, 10, 20, 20, 10]) == [5.0, 1.5, 3.5, 3.5, 1.5]
    assert average_ranks([7, 7, 7]) == [2.0, 2.0, 2.0]
    assert average_ranks([]) == []


def test_pearson_by_hand() -> None:
    # x - mean = -1.5, -0.5, 0.5, 1.5; y - mean(5) = -3, -1, 0, 4
    # sum dx dy = 4.5 + 0.5 + 0 + 6 = 11; sum dx^2 = 5; sum dy^2 = 26 -> r = 11 / sqrt(130)
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == approx(11 / math.sqrt(130))
    assert spearman([1, 2, 3, 4], [2, 4, 5, 9]) == approx(1.0)  # same order
    assert pearson([1, 2, 3], [3, 2, 1]) == approx(-1.0)


def test_spearman_uses_average_ranks_for_ties() -> None:
    # ranks x = [1, 2.5, 2.5, 4], ranks y = [1, 3, 2, 4], both with mean 2.5
    # dx = -1.5, 0, 0, 1.5; dy = -1.5, 0.5, -0.5, 1.5; sum dx dy = 4.5, sum dx^2 = 4.5,
    # sum dy^2 = 5 -> rho = 4.5 / sqrt(22.5) = sqrt(0.9) = 0.9487; the no-ties shortcut
    # 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 0.5 / 60 = 0.95 would be wrong here
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == approx(math.sqrt(0.9))


def test_correlation_is_none_when_undefined() -> None:
    assert pearson([1, 2, 3], [5, 5, 5]) is None  # constant side: zero variance
    assert pearson([0.1, 0.1, 0.1], [1, 2, 3]) is None  # constant even where the mean rounds
    assert spearman([2, 2], [1, 2]) is None
    assert pearson([1], [2]) is None  # one pair
    assert spearman([], []) is None


def test_score_report_by_hand() -> None:
    y_true = [3, 7, 5, 9, 1]
    y_pred = [4, None, 5, 6, 2]
    # parsed pairs (3,4) (5,5) (9,6) (1,2): errors 1, 0, 3, 1 -> sum 5, MAE 5/4
    r = numeric_report(y_true, y_pred, unparsed_error=9)
    assert r["n"] == 5
    assert r["parse"] == ParseRate(n=5, parsed=4, rate=0.8)
    assert r["mae_parsed"] == approx(1.25)
    # the unparsed answer counts an error of 9: (5 + 9) / 5
    assert r["mae"] == approx(14 / 5)
    # Pearson over the parsed pairs: t = 3, 5, 9, 1 (mean 4.5), p = 4, 5, 6, 2 (mean 4.25)
    # dt = -1.5, 0.5, 4.5, -3.5; dp = -0.25, 0.75, 1.75, -2.25
    # sum dt dp = 0.375 + 0.375 + 7.875 + 7.875 = 16.5; sum dt^2 = 35; sum dp^2 = 8.75
    # r = 16.5 / sqrt(306.25) = 16.5 / 17.5 = 33/35
    assert r["pearson"] == approx(33 / 35)
    # ranks t = 2, 3, 4, 1 and p = 2, 3, 4, 1: identical
    assert r["spearman"] == approx(1.0)
    # without a penalty, MAE covers the parsed answers and parse says how many
    r = numeric_report(y_true, y_pred, unparsed_error=None)
    assert r["mae"] == approx(1.25)
    assert r["parse"].parsed == 4


def test_report_when_nothing_parsed() -> None:
    r = numeric_report([3, 4], [None, None], unparsed_error=9)
    assert r["mae"] == 9.0
    assert (r["mae_parsed"], r["pearson"], r["spearman"]) == (None, None, None)
    assert numeric_report([3, 4], [None, None], unparsed_error=None)["mae"] is None
    assert numeric_report([3, 4], [None, None], unparsed_error=0)["mae"] == 0.0


@pytest.mark.parametrize(
    ("y_true", "y_pred", "penalty", "match"),
    [
        ([1, 2], [1], None, "2 items but y_pred has 1"),
        ([], [], None, "zero samples"),
        ([1, math.nan], [1, 2], None, r"y_true\[1\] is not a finite number"),
        ([1, None], [1, 2], None, r"y_true\[1\] is not a finite number"),
        ([1, 2], [None, math.inf], None, r"y_pred\[1\] is not a finite number"),
        ([1, 2], [1, math.nan], None, r"y_pred\[1\] is not a finite number"),
        ([1, 2], [1, "2"], None, r"y_pred\[1\] is not a finite number"),
        ([1, True], [1, 2], None, r"y_true\[1\] is not a finite number"),
        ([1], [None], -1, "unparsed_error must be >= 0"),
        ([1], [None], math.nan, "unparsed_error is not a finite number"),
    ],
)
def test_bad_input(y_true, y_pred, penalty, match) -> None:
    with pytest.raises(ValueError, match=match):
        numeric_report(y_true, y_pred, unparsed_error=penalty)


def test_bad_input_of_the_building_blocks() -> None:
    with pytest.raises(ValueError, match=r"y_pred\[0\] is not a finite number"):
        mean_absolute_error([1], [None])
    with pytest.raises(ValueError, match="x has 2 items but y has 1"):
        spearman([1, 2], [1])
    with pytest.raises(ValueError, match=r"x\[0\] is not a finite number"):
        pearson([math.nan, 1], [1, 2])
    with pytest.raises(TypeError):  # the unparsed policy has no default
        numeric_report([1], [1])  # type: ignore[call-arg]


def _direct_spearman(x, y):
    """Rank by counting (O(n^2)), then Pearson from raw sums; no code shared with the module."""

    def ranks(v):
        return [1 + sum(w < a for w in v) + (sum(w == a for w in v) - 1) / 2 for a in v]

    a, b, n = ranks(x), ranks(y), len(x)
    sxy = n * sum(p * q for p, q in zip(a, b, strict=True)) - sum(a) * sum(b)
    sxx = n * sum(p * p for p in a) - sum(a) ** 2
    syy = n * sum(q * q for q in b) - sum(b) ** 2
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def test_randomised_against_direct_spearman() -> None:
    rng = random.Random(19)
    for _ in range(300):
        n = rng.randint(2, 12)
        x = [rng.randint(1, 5) for _ in range(n)]  # few values: many ties
        y = [rng.randint(1, 5) for _ in range(n)]
        want = _direct_spearman(x, y)
        got = spearman(x, y)
        assert got == (None if want is None else pytest.approx(want, abs=1e-9))
