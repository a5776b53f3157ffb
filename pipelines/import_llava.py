"""Source format `llava`: LLaVA's annotation file -> rows.

Needs: `<uri>/<annotations>`, a JSON list (or .jsonl) of
`{"id", "image": path | [paths], "conversations": [{"from": "human"|"gpt", "value"}]}` with one
`<image>` placeholder per image, image paths relative to `<uri>/<image_dir>`.
Adds: as the llamafactory format (pipelines/import_llamafactory.py): id = `id` (else
`<file name>:<index>`), prompt = last human turn without placeholders, answer = last gpt turn,
conversation = JSON of all turns as user/assistant; split None.
Rejections: `bad_row` (turns must alternate human/gpt starting with human and end with gpt,
as LLaVA's preprocessing asserts; empty turns; wrong types; no `image`), `bad_path`,
`outside_source`, `image_count_mismatch`, `unknown_label` / `bad_answer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, TextIO

from hazard.config.data import DataConfig
from pipelines.import_llamafactory import Turns, chat_rows, sharegpt_turns
from pipelines.sources import (
    Source,
    check_json_head,
    inside,
    json_kind,
    read_head,
    require_file,
)

COLUMNS = {"messages": "conversations", "system": None}
TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": None,
    "function_tag": None,
    "system_tag": None,
}
IMAGE_KEY = "image"


def plan(source: Source, config: DataConfig) -> Source:
    """The source with its annotation file checked; SourceError otherwise."""
    rel = inside(config.source.annotations, "source.annotations")
    jsonl = json_kind(rel, "source.annotations")
    source = dataclasses.replace(source, annotation=rel)
    size = require_file(source, rel, config.storage, "annotation file")
    check_json_head(read_head(source, rel, config.storage), source.annotation_uri, jsonl)
    return dataclasses.replace(source, size=size, options={"jsonl": jsonl})


def _turns(sample: dict[str, Any], where: str) -> Turns:
    return sharegpt_turns(sample, where, COLUMNS, TAGS)


def iter_rows(stream: TextIO, source: Source) -> Iterator[dict[str, Any]]:
    """Every sample of the annotation file as a row (pure: no Ray, no image I/O)."""
    return chat_rows(stream, source, _turns, IMAGE_KEY, source.options["jsonl"])
