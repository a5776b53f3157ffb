"""Every answer kind's `format` is read back by its `parse` to the same value, and `same` says
so (order-free for label sets and boxes). Pure: no model."""

from __future__ import annotations

import pytest

from hazard.core.answer_kinds import BoxList, Label, Labels, Letter, Number, Score, Text

LABELLED = BoxList(labelled=True)
CASES = [
    # (kind, value, its canonical text written out by hand)
    (Label(("no_risk", "low_risk", "high_risk")), "low_risk", "low_risk"),
    (Label(), "glaucoma", "glaucoma"),  # open label set
    (Letter("ABCD"), "C", "C"),
    (Labels(("caries", "crown", "filling")), ("caries", "crown"), "caries, crown"),
    (Labels(), ("crown", "caries"), "crown, caries"),  # open: in the text's order
    (Labels(), (), "none"),
    (Number(whole=True), 17, "17"),
    (Number(), 36.5, "36.5"),
    (Number(), -0.25, "-0.25"),
    (Number(), 3.0, "3"),
    (Score(1, 10), 7.5, "7.5"),
    (Score(1, 10), 10.0, "10"),
    (
        BoxList(),
        [(10.0, 20.0, 300.0, 400.0), (1.5, 2.0, 3.0, 4.0)],
        "[[10, 20, 300, 400], [1.5, 2, 3, 4]]",
    ),
    (BoxList(), [], "[]"),
    (
        LABELLED,
        {"cat": [(1.0, 2.0, 30.0, 40.0)], "dog": [(50.0, 50.0, 80.0, 90.0)]},
        '[{"bbox_2d": [1, 2, 30, 40], "label": "cat"}, '
        '{"bbox_2d": [50, 50, 80, 90], "label": "dog"}]',
    ),
    (Text(), "A grey cat on a mat.", "A grey cat on a mat."),
]


@pytest.mark.parametrize(("kind", "value", "text"), CASES)
def test_format_is_parsed_back_to_the_same_value(kind, value, text):
    assert kind.format(value) == text
    parsed = kind.parse(kind.format(value))
    assert parsed == value
    assert kind.same(value, parsed)


@pytest.mark.parametrize(
    ("kind", "reference", "prediction", "same"),
    [
        (Labels(), ("a", "b"), ("b", "a"), True),
        (Labels(), ("a", "b"), ("a",), False),
        (Labels(), ("a",), None, False),
        (BoxList(), [(1, 1, 5, 5), (2, 2, 6, 6)], [(2, 2, 6, 6), (1, 1, 5, 5)], True),
        (BoxList(), [(1, 1, 5, 5)], [(1, 1, 5, 6)], False),
        (BoxList(), [(1, 1, 5, 5)], {"x": [(1, 1, 5, 5)]}, False),  # list vs mapping
        (LABELLED, {"a": [(1, 1, 5, 5), (2, 2, 6, 6)]}, {"a": [(2, 2, 6, 6), (1, 1, 5, 5)]}, True),
        (LABELLED, {"a": [(1, 1, 5, 5)]}, {"b": [(1, 1, 5, 5)]}, False),
        (Text(), "A  Grey cat", "a grey CAT", True),  # case and spaces folded
        (Label(("x", "y")), "x", "y", False),
        (Number(), 3.0, None, False),
    ],
)
def test_same(kind, reference, prediction, same):
    assert kind.same(reference, prediction) is same


def test_closed_labels_parse_in_the_list_order_and_are_still_the_same():
    kind = Labels(("caries", "crown", "filling"))
    parsed = kind.parse(kind.format(("crown", "caries")))
    assert parsed == ("caries", "crown") and kind.same(("crown", "caries"), parsed)


def test_box_order_in_the_text_does_not_matter_to_same():
    kind = BoxList()
    a = kind.parse("[[1, 1, 5, 5], [2, 2, 6, 6]]")
    b = kind.parse("[[2, 2, 6, 6], [1, 1, 5, 5]]")
    assert a != b and kind.same(a, b)
