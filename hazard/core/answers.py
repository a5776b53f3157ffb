"""Read answers out of free-text VLM outputs: scores, letters, risk labels, numbers, labels, boxes.

Each parser returns None when the text holds no answer it can stand behind; none guesses a
default. Shared rules:

- Markdown emphasis and code marks are dropped first (`**6**` reads as `6`).
- Echoed prompt parts are removed before reading: scales and placeholders (`[1-10]`, `1 to 10`,
  `<score>`, `{score}`, `[score]`, `X/10`, "where 1 is unsafe"), option lists ("A, B, C or D"),
  lists of risk labels ("no_risk, low_risk, ...").
- Answers are read in tiers, most explicit first (an "answer:/score:"-style keyword). Within a
  tier the LAST answer wins, so "Score: 3 ... Final score: 7" reads 7 and repeated lines agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hazard.core.detection import Box, check_box
from hazard.core.labels import RISK_LABELS

_I = re.IGNORECASE


def _strip_markdown(text: str) -> str:
    """Drop bold/italic/code/strike marks: `**6**` -> `6`."""
    return re.sub(r"\*+|`+|~~|__", "", text)


_CLAUSE_END = re.compile(r"[\n;!?]|\.(?!\d)")


def _segment_end(text: str, pos: int) -> int:
    """End of the clause that starts at `pos` (newline, `;`, `!`, `?` or a sentence period)."""
    m = _CLAUSE_END.search(text, pos)
    return m.start() if m else len(text)


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------

_SCORE_PLACEHOLDER = re.compile(
    r"""
      \[[^\[\]\d\n]{0,30}\]                                   # [score], [your answer]
    | <[^<>\n]{0,30}>                                         # <score>
    | \{[^{}\n]{0,30}\}                                       # {score}
    | \b(?:where|with|when)\s+\d+(?:\.\d+)?\s*(?:is|=|means|being)\b[^.;\n]*  # where 1 is unsafe
    | \d+(?:\.\d+)?\s*(?:=|being|means)\s*[a-z][^,;.)\n]*    # 1 = unsafe, 10 being safest
    | \d+(?:\s*\([^()\n]{0,30}\))?\s*(?:[-\u2013\u2014]|\bto\b)\s*\d+   # 1-10, 1 to 10,
      (?:\s*\([^()\n]{0,30}\))?                                  #   1 (unsafe) to 10 (safe)
    | (?:^|(?<=[^\d\s]))\s*(?:\bout\s+of\b|/)\s*\d+           # X/10, ?/10, "rate it out of 10"
    """,
    _I | re.VERBOSE | re.MULTILINE,
)

_NUMBER = re.compile(
    r"(?<![\w.])(?<!\d[,:/-])"  # not inside a word, decimal, time, date or thousands
    r"(?P<num>-?\d+(?:\.\d+)?)"
    r"(?:\s*(?:/|\bout\s+of\b)\s*(?P<den>\d+(?:\.\d+)?))?"  # 6/10, 6 out of 10
    r"(?![\w%°])(?![.,:/-]\d)",
    _I,
)
_UNIT_BEFORE = re.compile(
    r"(?:\b(?:lanes?|floors?|rooms?|apt|apartment|unit|suite|building|block|street|road|avenue|"
    r"exit|door|gate|stairs?|stairwell|step|page|fig(?:ure)?|image|photo|picture|frame|camera|"
    r"item|row|section|zone|wing|platform|line|route|question|option|version|no\.)|#)\s*$",
    _I,
)
_UNIT_AFTER = re.compile(
    r"\s*(?:%|°|(?:am|pm|a\.m|p\.m|hours?|hrs?|minutes?|mins?|seconds?|secs?|m|cm|mm|km|"
    r"meters?|metres?|ft|feet|foot|inch(?:es)?|kg|lbs?|kwh?|v|volts?|w|watts?|years?|months?|"
    r"weeks?|days?|people|persons?|items?|(?:e-?)?bikes?|scooters?|batter(?:y|ies)|boxes|bags?|"
    r"floors?|stor(?:ey|y|ies|eys)|rooms?|doors?|exits?|times|st|nd|rd|th)\b)",
    _I,
)
_STREET_AFTER = re.compile(  # "123 Main Street": capitalised name words, then a street word
    r"\s+(?:[A-Z][a-z]+\s+){1,3}(?i:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|"
    r"dr|way|court|ct|place|pl|square|sq)\b"
)

_SCORE_KEY = re.compile(r"\b(?:score[sd]?|rating|rated?|grade[sd]?|answer|gives?|verdict)\b", _I)
_SAFETY_KEY = re.compile(r"\b(?:safety|safe|unsafe)\b", _I)


@dataclass(frozen=True)
class _Num:
    start: int
    end: int
    value: float
    den: float | None


def _is_quantity(text: str, m: re.Match[str]) -> bool:
    """True for numbers that are addresses, years, lane/floor/room numbers, times or amounts."""
    before, after = text[max(0, m.start() - 24) : m.start()], text[m.end() :]
    year = m["den"] is None and re.fullmatch(r"(?:19|20)\d\d", m["num"]) is not None
    return bool(
        year
        or _UNIT_BEFORE.search(before)
        or _UNIT_AFTER.match(after)
        or _STREET_AFTER.match(after)
    )


def _numbers(text: str) -> list[_Num]:
    """Every number in `text` that could be a score (quantities left out), in order."""
    return [
        _Num(m.start(), m.end(), float(m["num"]), float(m["den"]) if m["den"] else None)
        for m in _NUMBER.finditer(text)
        if not _is_quantity(text, m)
    ]


def _after_key(text: str, key: re.Pattern[str], nums: list[_Num], window: int) -> Iterator[_Num]:
    """For each keyword match, the first number after it in the same clause within `window`."""
    for k in key.finditer(text):
        stop = min(k.end() + window, _segment_end(text, k.end()))
        hit = next((n for n in nums if k.end() <= n.start < stop), None)
        if hit is not None:
            yield hit


def _near_key(text: str, key: re.Pattern[str], nums: list[_Num], window: int) -> Iterator[_Num]:
    """Numbers within `window` characters of a keyword, on either side, in the same clause."""
    spans = [(k.start(), k.end()) for k in key.finditer(text)]
    for n in nums:
        for s, e in spans:
            gap = text[n.end : s] if n.end <= s else text[e : n.start] if e <= n.start else ""
            if len(gap) <= window and not _CLAUSE_END.search(gap):
                yield n
                break


def _alone_on_line(text: str, nums: list[_Num]) -> Iterator[_Num]:
    """Numbers that are the only content of their line (`7`, `(7)`, `7.`)."""
    for n in nums:
        line_start = text.rfind("\n", 0, n.start) + 1
        line_end = text.find("\n", n.end)
        rest = text[line_start : n.start] + text[n.end : line_end if line_end >= 0 else None]
        if not re.sub(r"[\s.!:()\[\]\"']", "", rest):
            yield n


def parse_score(text: str, scale: tuple[int, int] = (1, 10)) -> float | None:
    """Read a numeric score in `scale` (inclusive) from free text; None if there is none.

    Tiers, first with an in-range answer wins, last answer within a tier:
    1. a number right after a score keyword (`Score: 6`, `rated 6/10`, `safety score of 6`,
       `I'd give it a 6`);
    2. a fraction over the scale's maximum anywhere (`6/10`, `6 out of 10`);
    3. a number alone on its line (`7`, `**7**`);
    4. a number next to a safety word (`Safety: 7`, `7 for safety`).
    Addresses, years, lane/floor/room numbers, times, percentages, amounts with units, ranges
    and fractions over another maximum (`3/5` on a 1-10 scale) are never read as scores.
    Qualitative words (SAFE, HIGH RISK) are not mapped to numbers: they give None; use
    `parse_risk_level` for those.
    """
    lo, hi = scale
    if not lo < hi:
        raise ValueError(f"scale must be (low, high) with low < high, got {scale!r}")
    if not text:
        return None
    text = _SCORE_PLACEHOLDER.sub(" ", _strip_markdown(text))
    nums = _numbers(text)
    tiers = (
        list(_after_key(text, _SCORE_KEY, nums, window=40)),
        [n for n in nums if n.den is not None],
        list(_alone_on_line(text, nums)),
        list(_near_key(text, _SAFETY_KEY, nums, window=20)),
    )
    for tier in tiers:
        valid = [n.value for n in tier if lo <= n.value <= hi and n.den in (None, hi)]
        if valid:
            return valid[-1]
    return None


# --------------------------------------------------------------------------------------------
# Multiple choice
# --------------------------------------------------------------------------------------------

_CHOICE_KEY = (
    r"\b(?:answer|choice|choose|chose|select(?:ed)?|pick(?:ed)?|go\s+with|"
    r"(?:correct|right|best)\s+(?:option|choice|answer))\b"
)
_LETTER_END = r"(?=[^\w\n]*$|\s*[).,:;!?\]\-\u2013\u2014]|\s+(?:is|because|since|as|which)\b)"


def _choice_patterns(opts: str) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """(option-list, explicit-answer, marked-letter) patterns for the option letters `opts`."""
    up, both = re.escape(opts), re.escape(opts + opts.lower())
    sep = r"\s*(?:,|/|\||\bor\b|\band\b|,\s*or\b|[-\u2013~])\s*"  # "A, B or C", "A/B", "A-D"
    option_list = re.compile(rf"(?<![A-Za-z])[{up}](?:{sep}[{up}](?![A-Za-z]))+")
    explicit = re.compile(
        rf"(?i:{_CHOICE_KEY})(?:[^\w\n]*(?i:[a-z']{{2,}})\b){{0,6}}?[^\w\n]*"
        rf"(?<!\w)\(?(?P<a>[{both}])\)?{_LETTER_END}"
        rf"|(?<![\w(])\(?(?P<b>[{up}])\)?\s+(?i:is\s+(?:the\s+)?(?:correct|right|best|answer))\b",
        re.MULTILINE,
    )
    marked = re.compile(
        rf"\((?P<p>[{both}])\)|\[(?P<q>[{both}])\]"  # (B) [B]
        rf"|^\s*(?P<l>[{up}])(?:[.):]|\s*$)"  # "B." / "B)" / "B" at line start
        rf"|\b(?i:option)\s+(?P<o>[{up}])\b",  # option B
        re.MULTILINE,
    )
    return option_list, explicit, marked


def parse_choice(text: str, options: str = "ABCD") -> str | None:
    """Read the chosen option letter (upper case) from free text; None if there is none.

    Tiers:
    1. a letter after an answer keyword (`Answer: C`, `The correct option is **D**.`,
       `I choose (B)`) or before "is correct"; the last one wins;
    2. marked letters (`(B)`, `[B]`, `B.` at a line start, `option B`, a bare `B`), read only
       when they all name the same letter: several different ones are an echoed option list.
    Option lists ("A, B, C or D", "A-D") are removed first. A lone article ("A corridor") is
    not an answer.
    """
    opts = options.upper()
    if not opts or not opts.isalpha() or len(set(opts)) != len(opts):
        raise ValueError(f"options must be distinct letters, got {options!r}")
    if not text:
        return None
    option_list, explicit, marked = _choice_patterns(opts)
    text = option_list.sub(" ", _strip_markdown(text))
    answers = [(m["a"] or m["b"]).upper() for m in explicit.finditer(text)]
    if answers:
        return answers[-1]
    letters = {next(g for g in m.groups() if g).upper() for m in marked.finditer(text)}
    return letters.pop() if len(letters) == 1 else None


# --------------------------------------------------------------------------------------------
# Risk levels
# --------------------------------------------------------------------------------------------

_SEP = r"[\s_-]*"
_RISK = rf"{_SEP}(?:fire{_SEP})?risk"
_LABEL_WORDS = {  # tier 2: label words, snake_case, spaced or hyphenated
    "non_corridor": rf"non{_SEP}corridor|not\s+(?:an?\s+|the\s+)?(?:corridor|hallway)",
    "no_risk": rf"no{_SEP}risks?|risk{_SEP}free|zero{_RISK}",
    "low_risk": rf"(?:low|minor|minimal|slight){_RISK}",
    "medium_risk": rf"(?:medium|moderate|mid){_RISK}",
    "high_risk": rf"(?:high|severe|serious){_RISK}",
}
assert set(_LABEL_WORDS) == set(RISK_LABELS)
_QUALITATIVE = {  # tier 3: safe/unsafe; unsafe is read as high_risk (the costly class to miss)
    "high_risk": r"unsafe|not\s+safe|dangerous|hazardous",
    "no_risk": r"safe",
}
_LEVELS = {"high": "high_risk", "medium": "medium_risk", "moderate": "medium_risk"}
_LEVELS |= {"low": "low_risk", "none": "no_risk"}
_RISK_KEY = (  # "Answer:", "Risk level is", "label ="
    rf"(?:answer|label|class(?:ification)?|category|predict(?:ion|ed)|risk(?:{_SEP}level)?|"
    rf"hazard(?:{_SEP}level)?|level|assessment|verdict|result|output|rating)\s*(?:[:=-]|\bis\b)\s*"
)
_KEYED_LEVEL = (  # tier 1 bare levels: "Risk level: HIGH", "Answer: low", "hazard: none"
    rf"{_RISK_KEY}(?P<level>high|medium|moderate|low)|(?:risk|hazard)\s*[:=]\s*(?P<none>none)"
)
_RISK_MENTION = re.compile(
    r"\b(?:"
    + "|".join(f"(?P<{lab}>{pat})" for lab, pat in _LABEL_WORDS.items())
    + "|"
    + "|".join(f"(?P<q_{lab}>{pat})" for lab, pat in _QUALITATIVE.items())
    + f"|{_KEYED_LEVEL})\\b",
    _I,
)
_RISK_KEY_BEFORE = re.compile(rf"\b{_RISK_KEY}$", _I)
_NEGATION_BEFORE = re.compile(
    r"(?:\b(?:not|no|never|without)|n't)\s+(?:an?\s+|the\s+|any\s+)?$", _I
)
_LIST_GAP = re.compile(r"[ \t,;/|()\[\]'\"]*(?:\b(?:or|and)\b)?[ \t,;/|()\[\]'\"]*")


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    label: str
    tier: int  # 1 keyed answer, 2 label words, 3 safe/unsafe


def _risk_mentions(text: str) -> list[_Mention]:
    """Risk mentions in order, negated ones ("not high risk") left out."""
    out = []
    for m in _RISK_MENTION.finditer(text):
        line_before = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]
        if _NEGATION_BEFORE.search(line_before):
            continue
        name = m.lastgroup
        if name in ("level", "none"):
            out.append(_Mention(m.start(), m.end(), _LEVELS[m[name].lower()], 1))
            continue
        label = name.removeprefix("q_")
        tier = 1 if _RISK_KEY_BEFORE.search(line_before) else 3 if name.startswith("q_") else 2
        out.append(_Mention(m.start(), m.end(), label, tier))
    return out


def _drop_label_lists(text: str, mentions: list[_Mention]) -> list[_Mention]:
    """Remove runs of different labels joined only by commas/slashes/"or" (echoed option lists)."""
    runs: list[list[_Mention]] = []
    for m in mentions:
        if runs and _LIST_GAP.fullmatch(text[runs[-1][-1].end : m.start]):
            runs[-1].append(m)
        else:
            runs.append([m])
    return [m for run in runs if len({x.label for x in run}) == 1 for m in run]


def parse_risk_level(text: str) -> str | None:
    """Read one of RISK_LABELS from free text; None if there is none.

    Tiers, last mention within a tier wins:
    1. after a keyword: `Answer: medium_risk`, `Risk level: HIGH`, `Label = no risk`;
    2. label words in any spelling: `high_risk`, `HIGH RISK`, `high-risk`, `moderate risk`,
       `no risk`, `not a corridor`, `non-corridor`;
    3. qualitative words: `safe` -> no_risk, `unsafe`/`dangerous` -> high_risk.
    Negated mentions ("not high risk") are skipped; lists of different labels ("no_risk,
    low_risk or high_risk") are taken for an echoed prompt and skipped.
    """
    if not text:
        return None
    text = _strip_markdown(text)
    mentions = _drop_label_lists(text, _risk_mentions(text))
    for tier in (1, 2, 3):
        labels = [m.label for m in mentions if m.tier == tier]
        if labels:
            return labels[-1]
    return None


# --------------------------------------------------------------------------------------------
# Numbers (counts, regression values)
# --------------------------------------------------------------------------------------------

_PLAIN_NUMBER = re.compile(r"(?<![\w.])(?<!\d[,:/-])-?\d+(?:\.\d+)?(?![\w%°])(?![.,:/-]\d)")
_NUMBER_KEY = re.compile(
    r"\b(?:answer|count(?:ed)?|total|number|result|value|estimate[ds]?|there\s+(?:are|is|were|was)"
    r"|i\s+(?:see|count))\b",
    _I,
)


def parse_number(text: str, whole: bool = False) -> float | int | None:
    """Read a count or a regression value (digits, not words) from free text; None if none.

    Tiers, last answer within a tier: 1. the first number after a keyword in its clause
    (`Answer: 3`, `There are 3 bikes`, `Total: 12.5`); 2. a number alone on its line; 3. the
    only value in the text. Ranges (`3-5`), dates, times and fractions are not read. With
    `whole`, only whole numbers count (an int is returned; `3.5` does not parse).
    """
    if not text:
        return None
    text = _strip_markdown(text)
    nums = [_Num(m.start(), m.end(), float(m[0]), None) for m in _PLAIN_NUMBER.finditer(text)]
    if whole:
        nums = [n for n in nums if n.value.is_integer()]
    values = {n.value for n in nums}
    tiers = (
        list(_after_key(text, _NUMBER_KEY, nums, window=40)),
        list(_alone_on_line(text, nums)),
        nums if len(values) == 1 else [],
    )
    for tier in tiers:
        if tier:
            value = tier[-1].value
            return int(value) if whole else value
    return None


# --------------------------------------------------------------------------------------------
# Label lists (multi-label answers)
# --------------------------------------------------------------------------------------------

_LABELS_KEY = re.compile(
    r"\b(?:answer|labels?|findings?|class(?:es)?|categor(?:y|ies)|predictions?)\s*[:=]", _I
)
_NO_LABELS = re.compile(r"^\W*(?:none|no\s+(?:labels?|findings?)|nothing|\[\s*\])\W*$", _I)
_ITEM_SEP = re.compile(r"[,;|\n]|\band\b", _I)


def _label_pattern(labels: Sequence[str]) -> re.Pattern[str]:
    """Any label, longest first, in any spelling of its separators (`pleural_effusion`)."""
    spelled = [_SEP.join(map(re.escape, re.split(r"[\s_-]+", lab))) for lab in labels]
    order = sorted(range(len(labels)), key=lambda i: -len(labels[i]))
    alts = "|".join(f"(?P<l{i}>{spelled[i]})" for i in order)
    return re.compile(rf"(?<![^\W_])(?:{alts})(?![^\W_])", _I)


def parse_labels(text: str, labels: Sequence[str] | None = None) -> tuple[str, ...] | None:
    """Read a set of labels from free text, distinct, in order; None if there is none.

    Only what follows the last `Labels:`/`Answer:`-style keyword is read when there is one.
    With a closed `labels` list: every label mentioned (any case, `_`/space/`-` alike, longest
    label first, negated mentions such as "no effusion" left out), in `labels` order. Without
    it: the items between commas, semicolons, "and" or line breaks, bullets and quotes trimmed.
    `none`, `no findings` or `[]` alone read as the empty set ().
    """
    if not text:
        return None
    text = _strip_markdown(text)
    keys = list(_LABELS_KEY.finditer(text))
    if keys:
        text = text[keys[-1].end() :]
    if _NO_LABELS.match(text):
        return ()
    if labels is None:
        items = (
            re.sub(r"^[\s\-*\u2022\d.)\[\]'\"]+|[\s.\[\]'\"]+$", "", p)
            for p in _ITEM_SEP.split(text)
        )
        found = list(dict.fromkeys(i for i in items if i))
        return tuple(found) if found else None
    seen = set()
    for m in _label_pattern(labels).finditer(text):
        line_before = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]
        if not _NEGATION_BEFORE.search(line_before):
            seen.add(int(m.lastgroup[1:]))
    return tuple(labels[i] for i in sorted(seen)) if seen else None


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------

_N = r"(-?\d+(?:\.\d+)?)"
_BOX = re.compile(rf"\[\s*{_N}\s*,\s*{_N}\s*,\s*{_N}\s*,\s*{_N}\s*\]")
_BOX_CORNERS = re.compile(rf"\(\s*{_N}\s*,\s*{_N}\s*\)\s*,?\s*\(\s*{_N}\s*,\s*{_N}\s*\)")
_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
_NO_BOXES = re.compile(r"^\W*(?:none|no\s+(?:boxes|objects?)|nothing|\[\s*\])\W*$", _I)

Boxes = list[Box] | dict[str, list[Box]]


def parse_boxes(text: str, labelled: bool = False) -> Boxes | None:
    """Read boxes [x1, y1, x2, y2] in 0-1000 from free text; None if there is none.

    Reads Qwen2.5-VL's JSON objects (`{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}`), bare
    `[x1, y1, x2, y2]` lists and Qwen2-VL corner pairs `(x1,y1),(x2,y2)`, in order. `none`,
    `no boxes` or `[]` alone read as no boxes ([]). With `labelled`, the answer is a mapping
    label -> boxes and every box needs a label. A box that is not valid (outside 0-1000, no
    area) makes the whole answer unparsed: a half-read answer would score what was not said.
    """
    if not text:
        return None
    text = _strip_markdown(text)
    if _NO_BOXES.match(text):
        return {} if labelled else []
    found: list[tuple[str | None, tuple[str, ...]]] = []
    for obj in _JSON_OBJECT.finditer(text):
        box = _BOX.search(obj[0])
        if box and "bbox" in obj[0]:
            label = re.search(r'"label"\s*:\s*"([^"]*)"', obj[0])
            found.append((label[1] if label else None, box.groups()))
    if not found:
        boxes = sorted(
            [*_BOX.finditer(text), *_BOX_CORNERS.finditer(text)], key=lambda m: m.start()
        )
        found = [(None, m.groups()) for m in boxes]
    if not found or (labelled and any(label is None for label, _ in found)):
        return None
    try:
        return group_boxes([(label, check_box(coords)) for label, coords in found], labelled)
    except ValueError:
        return None


def group_boxes(pairs: Sequence[tuple[str | None, Box]], labelled: bool) -> Boxes:
    """(label, box) pairs as a list of boxes, or with `labelled` as a label -> boxes mapping."""
    if not labelled:
        return [box for _, box in pairs]
    out: dict[str, list[Box]] = {}
    for label, box in pairs:
        out.setdefault(str(label), []).append(box)
    return out
