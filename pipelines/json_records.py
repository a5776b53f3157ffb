"""Streaming readers of JSON annotation files (a JSON list or JSON lines), for the chat formats.

The driver never holds a whole file: `iter_json_list` decodes one element at a time from a text
stream; `iter_json_records` numbers the records and names them for details. Pure: no Ray.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, TextIO

from pipelines.sources import RowProblem, SourceError

_WS = re.compile(r"[ \t\r\n]*")


def iter_json_list(stream: TextIO, name: str, read_size: int = 1 << 20) -> Iterator[Any]:
    """The elements of a JSON list, decoded one at a time from a text stream (never the whole
    file in memory). SourceError if the text is not a JSON list (the rest is unreadable)."""
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False

    def more() -> bool:
        nonlocal buf, pos, eof
        data = "" if eof else stream.read(read_size)
        if not data:
            eof = True
            return False
        buf, pos = buf[pos:] + data, 0
        return True

    def peek() -> str:
        nonlocal pos
        while True:
            pos = _WS.match(buf, pos).end()
            if pos < len(buf):
                return buf[pos]
            if not more():
                return ""

    if peek() != "[":
        raise SourceError(f"{name}: not a JSON list (it does not start with '[')")
    pos += 1
    if peek() == "]":
        pos += 1
    else:
        index = 0
        while True:
            if peek() == "":
                raise SourceError(f"{name}: the file ends inside the list (element {index})")
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    truncated = exc.msg.startswith("Unterminated") or exc.pos >= len(buf) - 8
                    if truncated and more():
                        continue
                    raise SourceError(
                        f"{name}: invalid JSON in element {index}: {exc.msg}; the rest of the "
                        "file cannot be read"
                    ) from None
                if end == len(buf) and more():  # a number may go on in the next chunk
                    continue
                break
            pos = end
            yield value
            index += 1
            c = peek()
            pos += 1
            if c == "]":
                break
            if c == "":
                raise SourceError(f"{name}: the file ends inside the list (element {index})")
            if c != ",":
                raise SourceError(
                    f"{name}: expected ',' or ']' after element {index - 1}, found {c!r}"
                )
    if peek() != "":
        raise SourceError(f"{name}: unexpected data after the JSON list")


def iter_json_records(stream: TextIO, name: str, jsonl: bool) -> Iterator[tuple[int, str, Any]]:
    """(index, where, value) per record of a JSON list or JSON-lines file. `where` names the
    record for details (`f.json[3]`, `f.jsonl line 4`); an unparsable JSON line's value is a
    RowProblem (bad_row). Blank lines are skipped."""
    if not jsonl:
        for index, value in enumerate(iter_json_list(stream, name)):
            yield index, f"{name}[{index}]", value
        return
    index = 0
    for line_no, line in enumerate(stream, start=1):
        text = line.strip()
        if not text:
            continue
        where = f"{name} line {line_no}"
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            value = RowProblem("bad_row", f"{where}: invalid JSON ({exc.msg}, column {exc.colno})")
        yield index, where, value
        index += 1
