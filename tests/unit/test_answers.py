"""hazard.core.answers on outputs that fine-tuned VLMs really produce."""

from __future__ import annotations

import pytest

from hazard.core.answers import (
    parse_boxes,
    parse_choice,
    parse_labels,
    parse_number,
    parse_risk_level,
    parse_score,
)
from hazard.core.labels import RISK_LABELS

ECHOED_SCORE_PROMPT = (
    "USER: <image>\nRate the fire safety of this corridor on a scale of 1 to 10, where 1 is very "
    "dangerous and 10 is very safe. Reply as 'Safety Score: [1-10]'.\nASSISTANT: "
)

SCORES = [
    # plain and markdown
    ("Safety Score: **6**", 6.0),
    ("Score: 6", 6.0),
    ("**Score:** 6", 6.0),
    ("### Safety Score\n6/10", 6.0),
    ("The corridor has a safety score of 6.", 6.0),
    ("Scores: 6", 6.0),
    ("Score - 5", 5.0),
    ("Score: 6.5", 6.5),
    ("Score: 7.5/10", 7.5),
    ("`7`", 7.0),
    # fractions and "out of"
    ("6/10", 6.0),
    ("I'd rate it 6 out of 10.", 6.0),
    ("Safety rating: 8 out of 10", 8.0),
    ("Rating: 8/10 (good)", 8.0),
    ("Overall this corridor gets 3/10 because of the e-bike charging by the stairs.", 3.0),
    # bare answers and numbers near a safety word
    ("7", 7.0),
    ("**7**", 7.0),
    ("The corridor is mostly clear, with a few shoes by the doors.\n8", 8.0),
    ("Safety: 7", 7.0),
    ("I would give this corridor a 5 for safety.", 5.0),
    ("Floor 2 safety: 5", 5.0),
    # echoed prompts, placeholders, repeats
    (ECHOED_SCORE_PROMPT + "Safety Score: 4", 4.0),
    ("Give it a score out of 10.\n8", 8.0),
    ("Rate the corridor 1\u201310.\nScore: 5", 5.0),
    ("Score: 4\n\nScore: [1-10]", 4.0),
    ("Score: 7\nScore: 7\nScore: 7", 7.0),
    ("USER: Rate (1-10). Answer as 'Score: <score>'.\nASSISTANT: Score: 3", 3.0),
    # conflicting answers: the last explicit one wins
    ("Score: 3\nOn reflection, the final score: 7", 7.0),
    ("Safety: 9. Score: 2", 2.0),
    # numbers that are not scores next to the real one
    ("Score: 6\n\nReasoning: floor 3 has 2 e-bikes charging at 10 pm in lane 4.", 6.0),
    ("The corridor is blocked. Score: 2. Room 305 door is open.", 2.0),
    ("Score for room 12: 4", 4.0),
    ("Safety score (2023): 7", 7.0),
    # no answer: None, never a default
    ("", None),
    ("I cannot determine the safety score from this image.", None),
    ("Score: N/A", None),
    ("Score: [1-10]", None),
    ("<score>", None),
    ("Score: X/10", None),
    ("Safety Score: {score}", None),
    (ECHOED_SCORE_PROMPT, None),
    ("Rate the safety from 1 (very unsafe) to 10 (very safe).", None),
    ("The corridor is UNSAFE: an e-bike is charging next to the exit.", None),
    ("HIGH RISK", None),
    # addresses, years, lane/floor/room numbers, times, out-of-range, other scales
    ("The building at 123 Main Street has a clear corridor.", None),
    ("Photo taken in 2023.", None),
    ("An e-bike is parked in lane 3.", None),
    ("Boxes are stacked on floor 12.", None),
    ("Taken at 10:30 by the caretaker.", None),
    ("The image is taken at 3:45 PM on 12/05/2023.", None),
    ("The safety of lane 3 is poor.", None),
    ("There are 3 boxes near the door.", None),
    ("Exit 4 is blocked", None),
    ("Score: 11", None),
    ("Score: 0", None),
    ("Score: -3", None),
    ("Score: 70%", None),
    ("Score: 3/5", None),
    ("Score: 6-7", None),
]


@pytest.mark.parametrize(("text", "expected"), SCORES)
def test_parse_score(text: str, expected: float | None) -> None:
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    ("text", "scale", "expected"),
    [
        ("Score: 4/5", (1, 5), 4.0),
        ("Score: 8", (1, 5), None),
        ("Score: 0", (0, 10), 0.0),
        ("Quality: 85/100. Score: 85", (0, 100), 85.0),
    ],
)
def test_parse_score_other_scales(
    text: str, scale: tuple[int, int], expected: float | None
) -> None:
    assert parse_score(text, scale) == expected


def test_parse_score_rejects_bad_scale() -> None:
    with pytest.raises(ValueError, match="scale"):
        parse_score("Score: 5", (10, 1))


CHOICES = [
    ("(B)", "B"),
    ("B", "B"),
    ("**B**", "B"),
    ("Answer: C", "C"),
    ("answer: c", "C"),
    ("**Answer:** B", "B"),
    ("The correct option is **D**.", "D"),
    ("The answer is (C).", "C"),
    ("Correct answer: D", "D"),
    ("Answer: B) The corridor with the e-bike", "B"),
    ("C. The corridor with the bike is the most dangerous.", "C"),
    ("I choose option C because of the charging bike.", "C"),
    ("I think the best option is A because the exit is blocked.", "A"),
    ("B is correct.", "B"),
    ("Option B", "B"),
    ("The answer is B. Option A is wrong because the corridor is clear.", "B"),
    ("Answer: A\nActually, the correct answer is D.", "D"),
    ("Answer: B\nAnswer: B\nAnswer: B", "B"),
    ("Pick one of A\u2013D.\nAnswer: C", "C"),
    ("Which corridor is most dangerous? Answer with the letter (A, B, C or D).\nAnswer: B", "B"),
    # no answer
    ("", None),
    ("I cannot determine which image shows the hazard.", None),
    ("Answer: [letter]", None),
    ("Answer with A, B, C, or D.", None),
    ("A. red\nB. blue\nC. green\nD. yellow", None),
    ("(A) red (B) blue", None),
    ("Answer: A corridor with boxes along the wall.", None),
    ("The answer is a bit unclear.", None),
    ("Answer: Bob", None),
    ("Answer: A or B", None),
    ("Answer: E", None),
]


@pytest.mark.parametrize(("text", "expected"), CHOICES)
def test_parse_choice(text: str, expected: str | None) -> None:
    assert parse_choice(text) == expected


def test_parse_choice_other_options() -> None:
    assert parse_choice("Answer: E", "ABCDE") == "E"
    with pytest.raises(ValueError, match="options"):
        parse_choice("Answer: A", "AAB")


LABEL_LIST = "no_risk, low_risk, medium_risk, high_risk or non_corridor"

RISKS = [
    ("high_risk", "high_risk"),
    ("HIGH_RISK", "high_risk"),
    ("high-risk", "high_risk"),
    ("HIGH RISK", "high_risk"),
    ("medium risk", "medium_risk"),
    ("The corridor poses a moderate fire risk.", "medium_risk"),
    ("Low Risk.", "low_risk"),
    ("no risk", "no_risk"),
    ("no_risk", "no_risk"),
    ("NON_CORRIDOR", "non_corridor"),
    ("Non-corridor", "non_corridor"),
    ("This image is not a corridor; it shows a street.", "non_corridor"),
    ("Answer: **medium_risk**", "medium_risk"),
    ("Label: no_risk", "no_risk"),
    ("Label = no risk", "no_risk"),
    ("**Risk Level:** Medium", "medium_risk"),
    ("Risk level: HIGH", "high_risk"),
    ("Answer: low", "low_risk"),
    ("Risk: none", "no_risk"),
    ("The fire risk is low.", "low_risk"),
    ("Classification: high-risk", "high_risk"),
    ("An e-bike is charging by the stairs, which is a high fire risk.", "high_risk"),
    # qualitative words
    ("The corridor is safe.", "no_risk"),
    ("UNSAFE", "high_risk"),
    ("The corridor is not safe.", "high_risk"),
    ("It looks safe, but Risk: high", "high_risk"),
    ("Is it safe? It is not a corridor, it is a bedroom.", "non_corridor"),
    # negation, conflicts, repeats, echoed label lists
    ("This is not high risk; it is medium risk.", "medium_risk"),
    ("Answer: high_risk\nAnswer: low_risk", "low_risk"),
    ("high_risk\nhigh_risk\nhigh_risk", "high_risk"),
    (f"Classify the corridor as {LABEL_LIST}.\nAnswer: low_risk", "low_risk"),
    # no answer
    ("", None),
    ("I cannot determine", None),
    (f"Classify the corridor as {LABEL_LIST}.", None),
    ("There is no high risk here.", None),
    ("The risk is not high.", None),
    ("The answer is no.", None),
]


@pytest.mark.parametrize(("text", "expected"), RISKS)
def test_parse_risk_level(text: str, expected: str | None) -> None:
    result = parse_risk_level(text)
    assert result == expected
    assert result is None or result in RISK_LABELS


NUMBERS = [
    # (text, parse_number(text), parse_number(text, whole=True))
    ("3", 3.0, 3),
    ("**12**", 12.0, 12),
    ("Answer: 4", 4.0, 4),
    ("There are 3 e-bikes in the corridor.", 3.0, 3),
    ("I count 2 bags, 1 box... Total: 5", 5.0, 5),
    ("The length is 12.5", 12.5, None),
    ("Answer: 3.5", 3.5, None),
    ("Value: -2.25", -2.25, None),
    ("Counting the bikes:\n7", 7.0, 7),
    # no answer: ranges, dates, times, several unrelated numbers, words
    ("", None, None),
    ("three", None, None),
    ("Between 3-5 people.", None, None),
    ("Taken on 12/05/2023 at 10:30.", None, None),
    ("Lanes 2 and 4 are blocked", None, None),
    ("How many objects are there? Answer with a number.", None, None),
]


@pytest.mark.parametrize(("text", "number", "whole"), NUMBERS)
def test_parse_number(text: str, number: float | None, whole: int | None) -> None:
    assert parse_number(text) == number
    got = parse_number(text, whole=True)
    assert got == whole and (got is None or isinstance(got, int))


FINDINGS = ("effusion", "pleural_effusion", "atelectasis", "nodule")
LABEL_LISTS = [
    ("effusion, nodule", ("effusion", "nodule")),
    ("Findings: Nodule; ATELECTASIS.", ("atelectasis", "nodule")),
    ("pleural effusion", ("pleural_effusion",)),  # the longer label wins, not also "effusion"
    ("There is atelectasis but no nodule.", ("atelectasis",)),  # negated mention left out
    ("nodule\nnodule", ("nodule",)),
    ("Labels: none", ()),
    ("[]", ()),
    ("", None),
    ("I cannot tell.", None),
]


@pytest.mark.parametrize(("text", "expected"), LABEL_LISTS)
def test_parse_labels_closed(text: str, expected: tuple[str, ...] | None) -> None:
    assert parse_labels(text, FINDINGS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: cat, dog and bird.", ("cat", "dog", "bird")),
        ("- cat\n- dog\n- cat", ("cat", "dog")),
        ("Labels: 'red door'; 'blue wall'", ("red door", "blue wall")),
        ("none", ()),
        ("", None),
        (" , ;", None),
    ],
)
def test_parse_labels_open(text: str, expected: tuple[str, ...] | None) -> None:
    assert parse_labels(text) == expected


BOXES = [
    ("[10, 20, 300, 400]", [(10.0, 20.0, 300.0, 400.0)]),
    (
        "The bike is at [100,200,300,400] and [5, 5, 50, 50.5].",
        [(100.0, 200.0, 300.0, 400.0), (5.0, 5.0, 50.0, 50.5)],
    ),
    ("<|box_start|>(10,20),(30,40)<|box_end|>", [(10.0, 20.0, 30.0, 40.0)]),
    ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "bike"}]\n```', [(1.0, 2.0, 3.0, 4.0)]),
    ("no boxes", []),
    ("[]", []),
    # no answer: nothing read, a box outside 0-1000 or without area spoils the answer
    ("", None),
    ("The bike is by the door.", None),
    ("[10, 20, 1300, 400]", None),
    ("[300, 20, 100, 400] and [1, 2, 3, 4]", None),
    ("[10, 20, 30]", None),
]


@pytest.mark.parametrize(("text", "expected"), BOXES)
def test_parse_boxes(text: str, expected) -> None:
    assert parse_boxes(text) == expected


def test_parse_boxes_labelled() -> None:
    text = (
        '[{"bbox_2d": [1, 2, 3, 4], "label": "bike"}, {"label": "box", "bbox_2d": [5, 6, 7, 8]},'
        ' {"bbox_2d": [10, 10, 20, 20], "label": "bike"}]'
    )
    assert parse_boxes(text, labelled=True) == {
        "bike": [(1.0, 2.0, 3.0, 4.0), (10.0, 10.0, 20.0, 20.0)],
        "box": [(5.0, 6.0, 7.0, 8.0)],
    }
    assert parse_boxes("[1, 2, 3, 4]", labelled=True) is None  # a box without a label
    assert parse_boxes("none", labelled=True) == {}
