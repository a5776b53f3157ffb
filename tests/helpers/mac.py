"""A MAC-format folder (scientific journal covers, multiple choice), written by the test.

The MAC challenge ships LLaMA-Factory alpaca rows `{"system", "input", "output": "A".."D",
"images": [...]}` registered in `dataset_info.json` with the columns `COLUMNS`, one entry per
task and split; test rows carry an `id` and an empty `output`. Two tasks: `image2text` (one
cover, four text options, one `<image>`) and `text2image` (one title, four covers, one
`<image>` per option). Covers are real PNGs of distinct colours, so no two share a hash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

COLUMNS = {"prompt": "system", "query": "input", "response": "output", "images": "images"}
SYSTEM = {
    "image2text": "You are an expert in scientific journals. Pick the title of the cover.",
    "text2image": "You are an expert in scientific journals. Pick the cover of the title.",
}
OPTIONS = "ABCD"


def cover(root: Path, k: int) -> str:
    """The relative path of cover `k` under `root`, written as a 64x64 PNG of its own colour."""
    rel = f"covers/cover_{k:03d}.png"
    path = root / rel
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        colour = ((37 * k) % 256, (91 * k + 60) % 256, (53 * k + 120) % 256)
        Image.new("RGB", (64, 64), colour).save(path, format="PNG")
    return rel


def image2text_input(k: int, placeholders: int = 1) -> str:
    """The `input` of an image2text row about cover `k`."""
    titles = "\n".join(f"{o}. Title {k}-{o}" for o in OPTIONS)
    return "<image>" * placeholders + f"\nWhich title belongs to this cover?\n{titles}"


def text2image_input(k: int, placeholders: int = 4) -> str:
    """The `input` of a text2image row about title `k` (one `<image>` per option)."""
    options = [f"{o}. <image>" for o in OPTIONS[:placeholders]]
    options += [f"{o}." for o in OPTIONS[placeholders:]]
    return f"Which cover belongs to the title 'Study {k}'?\n" + "\n".join(options)


def mac_row(
    root: Path,
    task: str,
    k: int,
    output: str | None,
    row_id: str | None = None,
    placeholders: int | None = None,
) -> dict[str, Any]:
    """One MAC row of `task` about item `k` (covers k.. under `root`); `output` None leaves the
    key out; `placeholders` (default: one per image) sets the `<image>` count of `input`."""
    if task == "image2text":
        images = [cover(root, k)]
        text = image2text_input(k, 1 if placeholders is None else placeholders)
    else:
        images = [cover(root, 4 * k + j) for j in range(4)]
        text = text2image_input(k, 4 if placeholders is None else placeholders)
    row: dict[str, Any] = {"system": SYSTEM[task], "input": text, "images": images}
    if output is not None:
        row["output"] = output
    if row_id is not None:
        row["id"] = row_id
    return row


def write_mac(root: Path, entries: dict[str, list[dict[str, Any]]]) -> None:
    """`root/dataset_info.json` registering each entry as `<entry>.json` with the MAC columns,
    and each entry's rows in its file."""
    root.mkdir(parents=True, exist_ok=True)
    info = {name: {"file_name": f"{name}.json", "columns": COLUMNS} for name in entries}
    (root / "dataset_info.json").write_text(json.dumps(info, indent=1))
    for name, rows in entries.items():
        (root / f"{name}.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))


def user_turn(task: str, row: dict[str, Any]) -> str:
    """The user turn LLaMA-Factory builds from a MAC row: prompt column (`system`), a newline,
    the query column (`input`)."""
    return f"{SYSTEM[task]}\n{row['input']}"
