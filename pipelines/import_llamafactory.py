"""Source format `llamafactory`: LLaMA-Factory's `dataset_info.json` + a sharegpt/alpaca file.

Needs: `<uri>/dataset_info.json`; `source.dataset` names the entry (None: the only entry, or
else the only entry whose `file_name` exists in the folder), or `source.splits` names one entry
per split, {train: image2text_train, val: image2text_dev, test: image2text_test}, all read in
one run (test, then val, then train: dedup keeps the first copy, so a sample also in train stays
in its held-out split), each entry's rows getting its split (none is drawn). An entry is read as
LLaMA-Factory reads it (src/llamafactory/data/parser.py, converter.py): `file_name` (a .json
list or .jsonl, relative to the folder), `formatting` (`sharegpt`, default `alpaca`), `columns`
and `tags`. Without `columns`/`tags` LLaMA-Factory's defaults apply (alpaca: instruction, input,
output; sharegpt: messages=conversations; tags from, value, human, gpt, observation,
function_call, system); when the entry has `columns` or `tags`, a key they do not list is unset,
as in LLaMA-Factory. Images: the `images` column (one path or a list), relative to
`<uri>/<image_dir>` (LLaMA-Factory's media_dir, which defaults to the dataset folder).

Adds (see pipelines/sources.py): id = the sample's `id` field when present, else
`<file name>:<index>`; prompt = the last user turn, `<image>` placeholders removed and spaces
tidied; answer = the last assistant turn (stripped); conversation = JSON
`[{"role": "system"|"user"|"assistant", "content": ...}]` of all turns, placeholders kept (an
alpaca sample: history pairs, then instruction + "\\n" + input, then output); split: the
entry's under `source.splits`, else None.

Unlabelled rows: in a split of `source.unlabelled_splits` (a submission set's test split, e.g.
MAC's `{"id", "system", "input", "output": "", "images"}`), a sample whose answer is blank or
absent (alpaca: the response column; sharegpt: no last assistant turn, or a blank one) is kept
with answer None, its `id` as given and its conversation ending with the user's turn; it is
decoded, validated and deduplicated like any row, and never augmented, consistency-filtered or
trained on. A blank answer anywhere else is `bad_row`, as is a wrong one in any split
(`unknown_label` / `bad_answer`). Several images per row (MAC text2image: four options, four
`<image>` placeholders) need a task with `multi_image` (`multiple_choice`).

Rejections: `bad_row` where LLaMA-Factory would skip or misread the sample (turns must be user,
assistant, user, ... after an optional leading system turn and end with the assistant; no tool
turns; every turn non-empty text; wrong types; no image), `bad_path`, `outside_source`,
`image_count_mismatch` (`<image>` placeholders in the user/assistant turns != images, or several
images for a single-image task), `unknown_label` / `bad_answer`.
SourceError: no dataset_info.json, no or ambiguous entry, an unknown entry in `source.splits`
(the messages list the entries), hub/script
entries (no file_name), preference (`ranking`) or KTO data, an entry without an images column,
sharegpt tags without role/content/user/assistant tags, a file that is not .json/.jsonl or a
.json file that is not a list of objects.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

from hazard.config.data import MIXED, DataConfig
from hazard.config.storage import StorageConfig
from hazard.core.schema import IMAGE_PLACEHOLDER
from hazard.core.tasks import TaskSpec, get_task
from hazard.infra.storage import StorageError, join_uri, read_bytes
from pipelines.common import IMAGE_URIS, reject
from pipelines.json_records import iter_json_records
from pipelines.row_task import UNKNOWN_TASK, UnknownTask, task_of
from pipelines.sources import (
    STAGE,
    ImageResolver,
    RowProblem,
    Source,
    SourceError,
    base_row,
    check_answer,
    check_json_head,
    finalize,
    inside,
    json_kind,
    read_head,
    require_file,
    show,
    tidy_prompt,
)

INFO = "dataset_info.json"
COLUMN_DEFAULTS: dict[str, str | None] = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": None,
    "messages": "conversations",
    "system": None,
    "tools": None,
    "images": None,
    "videos": None,
    "audios": None,
    "chosen": None,
    "rejected": None,
    "kto_tag": None,
}
TAG_DEFAULTS: dict[str, str | None] = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}

Turns = tuple[str, list[dict[str, str]]]  # (system prompt, alternating user/assistant turns)
AnswerCheck = Callable[[TaskSpec, str, str], None]  # (task, answer, where); raises RowProblem


# --- planning (driver) ------------------------------------------------------------------------


def _load_info(source: Source, storage: StorageConfig) -> dict[str, Any]:
    uri = join_uri(source.root_uri, INFO)
    require_file(source, INFO, storage, INFO)
    try:
        info = json.loads(read_bytes(uri, storage).decode("utf-8-sig"))
    except (StorageError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{uri}: cannot read it as JSON ({exc})") from exc
    if not isinstance(info, dict) or not info:
        raise SourceError(f"{uri}: expected an object of dataset entries")
    return info


def _has_file(source: Source, entry: Any, storage: StorageConfig) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
        return False
    try:
        require_file(source, inside(entry["file_name"], "file_name"), storage, "file")
    except SourceError:
        return False
    return True


def select_entry(
    info: dict[str, Any], wanted: str | None, source: Source, storage: StorageConfig
) -> str:
    """The entry to import: `wanted`, or the only entry, or the only one with a file here."""
    names = list(info)
    if wanted is not None:
        if wanted not in info:
            raise SourceError(f"{INFO} has no entry {wanted!r}; its entries: {', '.join(names)}")
        return wanted
    if len(names) == 1:
        return names[0]
    present = [n for n in names if _has_file(source, info[n], storage)]
    if len(present) == 1:
        return present[0]
    raise SourceError(
        f"{INFO} has {len(names)} entries and {len(present)} with a file in {source.root_uri}"
        f" ({', '.join(present) or 'none'}); set source.dataset to one of: {', '.join(names)}"
    )


def entry_options(name: str, entry: Any) -> dict[str, Any]:
    """The entry's formatting, columns and tags as LLaMA-Factory resolves them; SourceError
    for entries this importer cannot read."""
    where = f"{INFO} entry {name!r}"
    if not isinstance(entry, dict):
        raise SourceError(f"{where} is not an object")
    if not isinstance(entry.get("file_name"), str):
        raise SourceError(
            f"{where} has no file_name (hub and script datasets are not imported: put the "
            f"file next to {INFO})"
        )
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise SourceError(f"{where}: formatting {formatting!r} is not alpaca or sharegpt")
    if entry.get("ranking"):
        raise SourceError(f"{where}: preference (ranking) datasets are not imported")
    columns = _mapping(entry, "columns", COLUMN_DEFAULTS, where)
    tags = _mapping(entry, "tags", TAG_DEFAULTS, where)
    if columns["kto_tag"]:
        raise SourceError(f"{where}: KTO datasets (columns.kto_tag) are not imported")
    if not columns["images"]:
        raise SourceError(f"{where} has no images column; this pipeline imports image samples")
    needed = ["messages"] if formatting == "sharegpt" else ["response"]
    needed_tags = ["role_tag", "content_tag", "user_tag", "assistant_tag"]
    if formatting == "alpaca" and not (columns["prompt"] or columns["query"]):
        needed.append("prompt")
    for key in needed:
        if not columns[key]:
            raise SourceError(f"{where}: columns leave {key!r} unset")
    if formatting == "sharegpt":
        for key in needed_tags:
            if not tags[key]:
                raise SourceError(
                    f"{where}: tags leave {key!r} unset (LLaMA-Factory unsets every tag that "
                    "`tags` does not list)"
                )
    return {"formatting": formatting, "columns": columns, "tags": tags}


def _mapping(
    entry: dict[str, Any], key: str, defaults: dict[str, str | None], where: str
) -> dict[str, str | None]:
    if key not in entry:
        return dict(defaults)
    given = entry[key]
    if not isinstance(given, dict) or any(
        v is not None and not isinstance(v, str) for v in given.values()
    ):
        raise SourceError(f"{where}: {key} must map names to strings")
    return {k: given.get(k) for k in defaults}


PART_ORDER = ("test", "val", "train")
"""The order `source.splits` entries are read in: a sample in a held-out split and in train is
kept in the held-out one (dedup keeps the first), so test ids all reach the answers file."""


def plan_entry(
    source: Source,
    info: dict[str, Any],
    name: str,
    storage: StorageConfig,
    split: str | None = None,
    unlabelled: bool = False,
) -> Source:
    """The source reading entry `name` (its rows get `split`; `unlabelled`: they may lack an
    answer), its data file checked; SourceError otherwise."""
    options = entry_options(name, info[name])
    rel = inside(info[name]["file_name"], f"{INFO} entry {name!r} file_name")
    jsonl = json_kind(rel, f"{INFO} entry {name!r} file_name")
    source = dataclasses.replace(source, annotation=rel)
    size = require_file(source, rel, storage, f"data file of entry {name!r}")
    check_json_head(read_head(source, rel, storage), source.annotation_uri, jsonl)
    options.update(dataset=name, jsonl=jsonl, split=split, unlabelled=unlabelled)
    return dataclasses.replace(source, size=size, options=options)


def plan(source: Source, config: DataConfig) -> Source:
    """The source with its entry (or, with `source.splits`, one part per split's entry)
    resolved and its data file(s) checked; SourceError otherwise."""
    storage, src = config.storage, config.source
    info = _load_info(source, storage)
    if src.splits is None:
        return plan_entry(source, info, select_entry(info, src.dataset, source, storage), storage)
    parts = []
    for split in (s for s in PART_ORDER if s in src.splits):
        try:
            name = select_entry(info, src.splits[split], source, storage)
        except SourceError as exc:
            raise SourceError(f"source.splits.{split}: {exc}") from None
        unlabelled = split in src.unlabelled_splits
        parts.append(plan_entry(source, info, name, storage, split, unlabelled))
    size = sum(p.size for p in parts)
    return dataclasses.replace(parts[0], size=size, parts=tuple(parts))


# --- rows (pure) ------------------------------------------------------------------------------


def _text(value: Any, where: str, what: str) -> str:
    """`value` as a non-empty string, else RowProblem bad_row."""
    if not isinstance(value, str):
        raise RowProblem("bad_row", f"{where}: {what} is {type(value).__name__}, not text")
    if not value.strip():
        raise RowProblem("bad_row", f"{where}: {what} is empty")
    return value


def _blank(value: Any) -> bool:
    """An absent answer: None or text of spaces only."""
    return value is None or (isinstance(value, str) and not value.strip())


def sharegpt_turns(
    sample: dict[str, Any],
    where: str,
    columns: Mapping[str, Any],
    tags: Mapping[str, Any],
    unlabelled: bool = False,
) -> Turns:
    """(system, turns) of a sharegpt sample, as LLaMA-Factory's SharegptDatasetConverter
    aligns them; RowProblem bad_row where it would mark the sample broken. `unlabelled`: the
    sample may end with the user's turn (a blank last assistant turn is dropped)."""
    messages = sample.get(columns["messages"])
    if not isinstance(messages, list) or not messages:
        raise RowProblem("bad_row", f"{where}: {columns['messages']!r} is not a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RowProblem("bad_row", f"{where}: turn {i} is {type(m).__name__}, not an object")
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    last = messages[-1]
    if unlabelled and last.get(role_tag) == tags["assistant_tag"] and _blank(last.get(content_tag)):
        messages = messages[:-1]
        if not messages:
            raise RowProblem("bad_row", f"{where}: no user turn")
    system, first = "", 0
    if tags["system_tag"] and messages[0].get(role_tag) == tags["system_tag"]:
        system = messages[0].get(content_tag)
        if not isinstance(system, str):
            raise RowProblem("bad_row", f"{where}: the system turn has no text")
        first = 1
    elif columns["system"] and sample.get(columns["system"]) is not None:
        system = sample[columns["system"]]
        if not isinstance(system, str):
            raise RowProblem("bad_row", f"{where}: {columns['system']!r} is not text")
    turns = []
    tool_tags = {tags["observation_tag"], tags["function_tag"]} - {None}
    for i, m in enumerate(messages[first:], start=first):
        expected = (tags["user_tag"], tags["assistant_tag"])[(i - first) % 2]
        role = m.get(role_tag)
        if role != expected:
            if role in tool_tags:
                raise RowProblem("bad_row", f"{where}: turn {i} is a tool turn ({role!r})")
            raise RowProblem(
                "bad_row",
                f"{where}: turn {i} has {role_tag} {show(role)}, expected {expected!r} (turns "
                f"alternate {tags['user_tag']!r} and {tags['assistant_tag']!r})",
            )
        content = _text(m.get(content_tag), where, f"turn {i}")
        turns.append({"role": ("user", "assistant")[(i - first) % 2], "content": content})
    if not turns:
        raise RowProblem("bad_row", f"{where}: no user turn")
    if len(turns) % 2 and not unlabelled:
        raise RowProblem("bad_row", f"{where}: the last turn is the user's: no assistant answer")
    return system, turns


def alpaca_turns(
    sample: dict[str, Any], where: str, columns: Mapping[str, Any], unlabelled: bool = False
) -> Turns:
    """(system, turns) of an alpaca sample, as LLaMA-Factory's AlpacaDatasetConverter builds
    them: history pairs, then prompt + "\\n" + query, then the response (`unlabelled`: a
    blank or absent response ends the turns at the user's)."""
    turns: list[dict[str, str]] = []
    history = sample.get(columns["history"]) if columns["history"] else None
    if history is not None:
        if not isinstance(history, list):
            raise RowProblem("bad_row", f"{where}: {columns['history']!r} is not a list")
        for k, pair in enumerate(history):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise RowProblem("bad_row", f"{where}: history[{k}] is not a [query, answer] pair")
            query, answer = (_text(x, where, f"history[{k}]") for x in pair)
            turns += [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
    parts = []
    for key in ("prompt", "query"):
        value = sample.get(columns[key]) if columns[key] else None
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise RowProblem("bad_row", f"{where}: {columns[key]!r} is not text")
        parts.append(value)
    turns.append({"role": "user", "content": _text("\n".join(parts), where, "the instruction")})
    response = sample.get(columns["response"])
    if not (unlabelled and _blank(response)):
        answer = _text(response, where, f"{columns['response']!r}")
        turns.append({"role": "assistant", "content": answer})
    system = sample.get(columns["system"]) if columns["system"] else None
    if system is not None and not isinstance(system, str):
        raise RowProblem("bad_row", f"{where}: {columns['system']!r} is not text")
    return system or "", turns


def _sample_id(sample: dict[str, Any], fallback: str, where: str) -> str:
    value = sample.get("id")
    if value is None or value == "":
        return fallback
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowProblem("bad_row", f"{where}: id is {type(value).__name__}, not text")
    return str(value)


def _image_paths(value: Any) -> list[Any]:
    """The images column as a list (LLaMA-Factory's _find_medias: one path or a list)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def chat_row(
    source: Source,
    task: TaskSpec | None,
    index: int,
    where: str,
    sample: Any,
    turns_of: Callable[[dict[str, Any], str], Turns],
    images_column: str,
    resolve: ImageResolver,
    check: AnswerCheck = check_answer,
) -> dict[str, Any]:
    """One chat sample (sharegpt, alpaca, LLaVA or FLARE) as a row, rejected at its first
    problem. Its split is the source's (`options["split"]`); turns that end with the user's
    (only `turns_of` of an unlabelled split gives them) make an unlabelled row, answer None.
    `task` None (a `task: mixed` job): the row's own task (`pipelines.row_task.task_of`).
    `check(task, answer, where)` judges the reference answer (FLARE's reads pixel boxes)."""
    row = base_row(source, task, index, f"{source.annotation_name}:{index}")
    row["split"] = source.options.get("split")
    try:
        if isinstance(sample, RowProblem):
            raise sample
        if not isinstance(sample, dict):
            raise RowProblem("bad_row", f"{where}: {type(sample).__name__}, not an object")
        row["id"] = _sample_id(sample, row["id"], where)
        system, turns = turns_of(sample, where)
        conversation = ([{"role": "system", "content": system}] if system else []) + turns
        row["conversation"] = json.dumps(conversation, ensure_ascii=False)
        labelled = turns[-1]["role"] == "assistant"
        row["prompt"] = tidy_prompt(turns[-2 if labelled else -1]["content"])
        row["answer"] = turns[-1]["content"].strip() if labelled else None
        if task is None:
            try:
                task = task_of(sample, source.options, row["prompt"], row["answer"])
            except UnknownTask as exc:
                raise RowProblem(UNKNOWN_TASK, f"{where}: {exc}") from None
            row["task"] = task.name
        _check_image_turns(conversation, where)
        paths = _image_paths(sample.get(images_column))
        if not paths:
            raise RowProblem("bad_row", f"{where}: no image ({images_column!r} is empty)")
        resolved = [
            resolve(p, f"{where} image {k}" if len(paths) > 1 else where)
            for k, p in enumerate(paths)
        ]
        row[IMAGE_URIS] = [uri for _, uri in resolved]
        if len(resolved) == 1:
            row["source_uri"] = resolved[0][1]
        placeholders = sum(t["content"].count(IMAGE_PLACEHOLDER) for t in turns)
        # (only user turns hold them: _check_image_turns)
        if placeholders != len(paths):
            raise RowProblem(
                "image_count_mismatch",
                f"{where}: {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the turns but "
                f"{len(paths)} image(s)",
            )
        if labelled:
            check(task, row["answer"], where)
        if len(paths) > 1 and not task.multi_image:
            raise RowProblem(
                "image_count_mismatch",
                f"{where}: {len(paths)} images, but task {task.name} takes one image per sample",
            )
    except RowProblem as p:
        return reject(row, p.reason, p.detail, STAGE)
    return row


def _check_image_turns(conversation: list[dict[str, str]], where: str) -> None:
    """RowProblem `misplaced_image` when a system or assistant turn holds `<image>`: images
    go in user turns (the encoder, hazard.model.vlm.conversation_messages, refuses others)."""
    for i, turn in enumerate(conversation):
        if turn["role"] != "user" and IMAGE_PLACEHOLDER in turn["content"]:
            raise RowProblem(
                "misplaced_image",
                f"{where}: turn {i} ({turn['role']}) holds {IMAGE_PLACEHOLDER}; images go in "
                "user turns only",
            )


def chat_rows(
    stream: TextIO,
    source: Source,
    turns_of: Callable[[dict[str, Any], str], Turns],
    images_column: str,
    jsonl: bool,
) -> Iterator[dict[str, Any]]:
    """Every record of a chat annotation file as a row, ids made unique."""
    rows = (row for _, _, row in chat_records(stream, source, turns_of, images_column, jsonl))
    return finalize(rows, source.annotation_name)


def chat_records(
    stream: TextIO,
    source: Source,
    turns_of: Callable[[dict[str, Any], str], Turns],
    images_column: str,
    jsonl: bool,
    check: AnswerCheck = check_answer,
) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(where, record, row) per record of a chat annotation file, ids not yet made unique."""
    task = None if source.task == MIXED else get_task(source.task)
    resolve = ImageResolver(source)
    for i, where, v in iter_json_records(stream, source.annotation_name, jsonl):
        row = chat_row(source, task, i, where, v, turns_of, images_column, resolve, check)
        yield where, v, row


def iter_rows(stream: TextIO, source: Source) -> Iterator[dict[str, Any]]:
    """Every sample of the entry's file as a row (pure: no Ray, no image I/O)."""
    opts = source.options
    columns, tags, unlabelled = opts["columns"], opts["tags"], opts["unlabelled"]
    if opts["formatting"] == "sharegpt":

        def turns_of(sample: dict[str, Any], where: str) -> Turns:
            return sharegpt_turns(sample, where, columns, tags, unlabelled)
    else:

        def turns_of(sample: dict[str, Any], where: str) -> Turns:
            return alpaca_turns(sample, where, columns, unlabelled)

    return chat_rows(stream, source, turns_of, columns["images"], opts["jsonl"])
