"""hazard.core.tasks, answer_kinds and decoding: the registry, each kind's reference check,
parser and metrics (figures worked by hand in the comments), and decoding validation."""

from __future__ import annotations

import pytest

from hazard.core.answer_kinds import BoxList, Label, Labels, Letter, Number, Score, Text
from hazard.core.answers import parse_risk_level
from hazard.core.decoding import Decoding, Generate, Likelihood
from hazard.core.labels import RISK_LABELS
from hazard.core.tasks import CORRIDOR_RISK_PROMPT, TASKS, TaskSpec, get_task, register
from pipelines.sources import RowProblem, check_answer

# --- the registry ----------------------------------------------------------------------------


def test_every_task_is_registered_with_its_kind_and_inference():
    kinds = {name: (t.answer.kind, t.inference.mode, t.prompt_source) for name, t in TASKS.items()}
    assert kinds == {
        "corridor_risk": ("label", "likelihood", "template"),
        "high_risk_binary": ("label", "likelihood", "template"),
        "multiple_choice": ("letter", "likelihood", "row"),
        "classification": ("label", "generate", "row"),
        "multi_label": ("labels", "generate", "row"),
        "vqa": ("text", "generate", "row"),
        "score": ("score", "generate", "template"),
        "counting": ("number", "generate", "row"),
        "grounding": ("boxes", "generate", "row"),
        "report": ("text", "generate", "row"),
        "instance_detection": ("boxes", "generate", "row"),
        "regression": ("number", "generate", "row"),
    }


def test_existing_tasks_keep_their_prompts_and_closed_labels():
    assert get_task("corridor_risk").prompt == CORRIDOR_RISK_PROMPT
    assert get_task("corridor_risk").labels == RISK_LABELS
    assert get_task("high_risk_binary").labels == ("other", "high_risk")
    assert get_task("multiple_choice").labels == ("A", "B", "C", "D")
    assert get_task("multiple_choice").multi_image and get_task("vqa").multi_image
    for name in ("classification", "multi_label", "vqa", "score", "counting", "grounding"):
        assert get_task(name).labels is None, name
    assert get_task("corridor_risk").answer.parse("Risk level: HIGH") == "high_risk"


def test_a_duplicate_name_is_refused():
    with pytest.raises(ValueError, match=r"^task 'score' is registered already$"):
        register(TaskSpec("score", "Rate it."))
    assert TASKS["score"].prompt == "Rate the safety of this picture from 1 to 10."


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'nope'; known: \['classification'"):
        get_task("nope")


@pytest.fixture
def bike_count():
    """A task registered by a test alone: one entry, no product edit."""
    spec = register(
        TaskSpec(
            "bike_count",
            "How many e-bikes are in the corridor?",
            answer=Number(whole=True),
            inference=Generate(Decoding(max_new_tokens=8)),
        )
    )
    yield spec
    del TASKS["bike_count"]


def test_a_task_registered_here_runs_through_check_parse_and_metrics(bike_count):
    task = get_task("bike_count")
    check_answer(task, "2", "f.csv[1]")  # the importer's check takes it as it is
    with pytest.raises(RowProblem) as err:
        check_answer(task, "two", "f.csv[2]")
    assert (err.value.reason, err.value.detail) == (
        "bad_answer",
        "f.csv[2]: 'two' is not a whole number (counting)",
    )
    refs = [task.answer.read(a) for a in ("2", "0", "5")]
    preds = [task.answer.parse(t) for t in ("There are 3 e-bikes.", "0", "I cannot tell")]
    assert preds == [3, 0, None]
    m = task.answer.metrics(refs, preds)
    assert m["parse"].rate == pytest.approx(2 / 3)
    assert m["mae"] == pytest.approx((1 + 0) / 2)  # over the two parsed answers
    assert task.inference.decoding.max_new_tokens == 8


# --- TaskSpec validation ---------------------------------------------------------------------


def test_likelihood_needs_a_closed_answer_set():
    with pytest.raises(ValueError, match=r"task t: likelihood scoring needs a closed answer set"):
        TaskSpec("t", "How many?", answer=Number(), inference=Likelihood())
    assert TaskSpec("t", "Which?", answer=Letter("AB")).inference == Likelihood()
    assert TaskSpec("t", "How many?", answer=Number()).inference == Generate(Decoding())


def test_a_spec_gives_its_answer_once():
    with pytest.raises(ValueError, match=r"give `answer` or `labels`/`answer_check`, not both"):
        TaskSpec("t", "Which?", labels=("a", "b"), answer=Label(("a", "b")))
    with pytest.raises(ValueError, match=r"prompt_source must be 'template' or 'row'"):
        TaskSpec("t", "Which?", prompt_source="file")
    with pytest.raises(ValueError, match=r"labels must be distinct non-empty strings"):
        Label(("a", "a"))


def test_labels_or_a_check_without_a_kind_make_one():
    closed = TaskSpec("t", "Which?", ("a", "b"))
    assert closed.answer == Label(("a", "b")) and closed.answer_check("c") == "is not one of a, b"
    free = TaskSpec("t", "Say.", answer_check=lambda a: None if a == "ok" else "is not ok")
    assert free.answer.kind == "text" and free.labels is None
    assert (free.answer_check("ok"), free.answer_check("no")) == (None, "is not ok")


# --- reference checks, per kind (the message completes "'<answer>' ...") ------------------------

CHECKS = [
    (Label(("x", "y")), "x", None),
    (Label(("x", "y")), "X", "is not one of x, y"),
    (Label(None), "a red door", None),
    (Letter("ABCD"), "C", None),
    (Letter("ABCD"), "E", "is not one of the options A, B, C, D"),
    (Letter("ABCD"), "c", "is not one of the options A, B, C, D"),
    (Labels(("a", "b", "c")), "a, c", None),
    (Labels(("a", "b", "c")), "none", None),
    (Labels(("a", "b", "c")), "a, d; e", "has unknown label(s) d, e; expected from a, b, c"),
    (Labels(("a", "b", "c")), "a;a", "repeats a"),
    (Labels(None), "a,,b", "has an empty label in its list"),
    (Number(whole=True), "12", None),
    (Number(whole=True), "-1", "is not a whole number (counting)"),
    (Number(), "-1.5", None),
    (Number(), "1e3", "is not a number"),
    (Number(), "nan", "is not a number"),
    (Score(1, 10), "Score: 8/10", None),
    (Score(1, 10), "eleven", "holds no score from 1 to 10"),
    (Score(0, 5), "6", "holds no score from 0 to 5"),
    (BoxList(), "[0, 0, 1000, 1000]", None),
    (BoxList(), '[{"bbox_2d": [1, 2, 3, 4], "label": "bike"}]', None),
    (BoxList(), "[]", None),
    (
        BoxList(),
        "[0, 0, 1200, 10]",
        "has a bad box: box [0, 0, 1200, 10] lies outside [0, 1000.0] x [0, 1000.0]",
    ),
    (
        BoxList(),
        "[[0, 0, 10, 10], [5, 5, 1, 1]]",
        "has a bad box: box [5, 5, 1, 1] needs x1 < x2 and y1 < y2",
    ),
    (
        BoxList(),
        "a bike",
        'is not JSON boxes ([x1, y1, x2, y2], a list of them or [{"bbox_2d": ..., "label": ...}])',
    ),
    (BoxList(labelled=True), "[1, 2, 3, 4]", "has a box without a label"),
    (Text(), "anything at all", None),
    (Text(validate=lambda a: "is too short" if len(a) < 3 else None), "ab", "is too short"),
]


@pytest.mark.parametrize(("kind", "answer", "problem"), CHECKS)
def test_reference_check(kind, answer, problem):
    assert kind.check(answer) == problem


def test_references_are_read_as_values():
    assert Labels(("a", "b")).read("b; a") == ("b", "a")
    assert Number(whole=True).read("7") == 7 and Number().read("-2.5") == -2.5
    assert Score().read("Score: 8/10") == 8.0
    assert BoxList().read("[1, 2, 3, 4]") == [(1.0, 2.0, 3.0, 4.0)]
    labelled = '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "a"}]'
    assert BoxList(labelled=True).read(labelled) == {
        "a": [(1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0)]
    }


def test_grounding_quarantines_a_box_outside_0_1000():
    with pytest.raises(RowProblem) as err:
        check_answer(get_task("grounding"), "[10, 10, 20, 1001]", "a.json[3]")
    assert err.value.reason == "bad_answer"
    assert err.value.detail == (
        "a.json[3]: '[10, 10, 20, 1001]' has a bad box: box [10, 10, 20, 1001] lies outside "
        "[0, 1000.0] x [0, 1000.0]"
    )


# --- parsing and metrics, per kind -----------------------------------------------------------


def test_letter_parse_and_metrics():
    kind = Letter("ABCD")
    preds = [kind.parse(t) for t in ("Answer: A", "(C)", "I think so", "A")]
    assert preds == ["A", "C", None, "A"]
    m = kind.metrics(["A", "B", "C", "A"], preds)
    assert m["accuracy"] == 0.5  # 2 of 4
    assert m["balanced_accuracy"] == pytest.approx((1 + 0 + 0) / 3)  # recall A 2/2, B 0/1, C 0/1
    assert m["micro_f1"] == pytest.approx(4 / 7)  # TP 2, FP 1 (C for B), FN 2: 4 / (4 + 1 + 2)
    assert (m["parse"].parsed, m["parse"].rate) == (3, 0.75)


def test_label_parse_and_metrics():
    kind = Label(("x", "y"))
    preds = [kind.parse(t) for t in ("x", "It is y.", "x or y")]
    assert preds == ["x", "y", None]  # two labels named: no answer
    m = kind.metrics(["x", "y", "y"], preds)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["parse"].rate == pytest.approx(2 / 3)
    risk = Label(RISK_LABELS, parser=parse_risk_level)
    assert risk.parse("The corridor is not safe.") == "high_risk"


def test_open_label_metrics_use_the_references_labels():
    kind = Label(None)
    preds = [kind.parse(t) for t in ("cat", "dog", "   ")]
    assert preds == ["cat", "dog", None]
    m = kind.metrics(["cat", "cat", "dog"], preds)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 0) / 2)  # cat 1/2, dog 0/1
    assert list(m["per_class"]) == ["cat", "dog"]


def test_labels_parse_and_metrics():
    kind = Labels(("a", "b", "c"))
    preds = [kind.parse(t) for t in ("a, b", "Labels: a", "none", "no idea")]
    assert preds == [("a", "b"), ("a",), (), None]
    m = kind.metrics([("a", "b"), ("c",), (), ("b",)], preds)
    # TP 2 (a, b); FP 1 (a for c); FN 2 (c, and b of the unparsed answer): 4 / (4 + 1 + 2)
    assert m["micro_f1"] == pytest.approx(4 / 7)
    assert m["samples_f1"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert m["parse"].rate == 0.75


def test_number_parse_and_metrics():
    kind = Number(whole=True)
    refs = [kind.read(a) for a in ("3", "10", "0")]
    preds = [kind.parse(t) for t in ("There are 4 bikes", "10", "none here")]
    assert preds == [4, 10, None]
    m = kind.metrics(refs, preds)
    assert m["mae"] == 0.5  # |3-4| and |10-10| over the 2 parsed answers
    assert m["pearson"] == pytest.approx(1.0)  # two parsed pairs on a rising line
    assert m["parse"].parsed == 2


def test_score_charges_an_unparsed_answer_the_scale_width():
    kind = Score(1, 10)
    refs = [kind.read(a) for a in ("7", "Score: 2/10", "9")]
    preds = [kind.parse(t) for t in ("Score: 5", "2", "Score: N/A")]
    assert preds == [5.0, 2.0, None]
    m = kind.metrics(refs, preds)
    assert m["mae"] == pytest.approx((2 + 0 + 9) / 3)
    assert m["mae_parsed"] == pytest.approx(1.0)


def test_boxes_parse_and_metrics():
    kind = BoxList(thresholds=(0.5, 0.75))
    refs = [kind.read(a) for a in ("[0, 0, 100, 100]", "[[0, 0, 100, 100], [200, 200, 300, 300]]")]
    preds = [kind.parse(t) for t in ("[0, 0, 100, 50]", "Box: [200, 200, 300, 300]")]
    m = kind.metrics(refs, preds)["by_threshold"]
    # image 1: IoU 5000 / 10000 = 0.5; image 2: one exact match, one reference missed
    assert (m[0.5].tp, m[0.5].fp, m[0.5].fn, m[0.5].f1) == (2, 0, 1, pytest.approx(4 / 5))
    assert (m[0.75].tp, m[0.75].fp, m[0.75].fn, m[0.75].f1) == (1, 1, 2, pytest.approx(2 / 5))
    with pytest.raises(ValueError, match=r"IoU thresholds must lie in \(0, 1\]"):
        BoxList(thresholds=(0.0,))


def test_text_parse_and_metrics():
    kind = Text(exact=True)
    preds = [kind.parse(t) for t in ("a  Red door ", " \n", "two")]
    assert preds == ["a  Red door", None, "two"]
    m = kind.metrics(["A red door", "one", "three"], preds)
    assert m["exact_match"] == pytest.approx(1 / 3)  # case and spaces folded
    assert m["mean_words"] == pytest.approx((3 + 1) / 2)
    assert m["parse"].rate == pytest.approx(2 / 3)
    report = get_task("report").answer.metrics(["x"], ["The corridor is clear."])
    assert "exact_match" not in report and report["mean_words"] == 4
    with pytest.raises(ValueError, match=r"y_true has 1 items but y_pred has 2"):
        kind.metrics(["a"], ["a", "b"])


# --- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.7}, "temperature applies to sampling only: set do_sample=True"),
        ({"top_p": 0.9}, "top_p applies to sampling only"),
        ({"do_sample": True, "temperature": 0}, r"temperature must be > 0, got 0"),
        ({"do_sample": True, "top_p": 1.5}, r"top_p must lie in \(0, 1\], got 1.5"),
        ({"do_sample": True, "top_p": 0.0}, r"top_p must be > 0, got 0.0"),
        ({"repetition_penalty": 0}, r"repetition_penalty must be > 0, got 0"),
        ({"max_new_tokens": 0}, r"max_new_tokens must be a whole number >= 1, got 0"),
        ({"max_new_tokens": 2.5}, r"max_new_tokens must be a whole number >= 1, got 2.5"),
        ({"do_sample": "yes"}, r"do_sample must be true or false, got 'yes'"),
    ],
)
def test_bad_decoding_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Decoding(**kwargs)


def test_decoding_kwargs():
    greedy = Decoding(max_new_tokens=16)
    assert greedy.transformers_kwargs() == {
        "do_sample": False,
        "repetition_penalty": 1.0,
        "max_new_tokens": 16,
    }
    assert greedy.vllm_kwargs()["temperature"] == 0.0
    sampled = Decoding(do_sample=True, top_p=0.9, repetition_penalty=1.1)
    assert sampled.temperature == 1.0  # unset: the neutral temperature
    assert sampled.transformers_kwargs()["top_p"] == 0.9
    assert sampled.vllm_kwargs() == {
        "temperature": 1.0,
        "top_p": 0.9,
        "repetition_penalty": 1.1,
        "max_tokens": 64,
    }
