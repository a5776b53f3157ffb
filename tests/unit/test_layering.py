"""The import rules of docs/architecture.md ("Layout and import rules") hold.

Each product room (`hazard/` and its rooms `hazard/core/`, `hazard/augment/`, `hazard/config/`,
`hazard/infra/`, `hazard/model/`; `pipelines/`, `ray_jobs/`, `serve/`) may import only the rooms
that the table's
"may import" column names, besides itself; naming a room allows the rooms inside it too. A
module belongs to the innermost room that holds it. The rules are about static
imports: every `import` and `from ... import` a module holds, at any depth (inside functions
and `if TYPE_CHECKING:` too), parsed with `ast`; names given to `importlib` as strings are not
imports. The rules are read from the table itself, so the document and the check cannot drift.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = REPO / "docs" / "architecture.md"
# the product's Python rooms, outer before inner
ROOMS = (
    "hazard",
    "hazard/core",
    "hazard/augment",
    "hazard/config",
    "hazard/infra",
    "hazard/model",
    "pipelines",
    "ray_jobs",
    "serve",
)
INNER = {"hazard/core", "hazard/augment", "hazard/config", "hazard/infra", "hazard/model"}
# What the domain core may not import: it stays importable without the ML stack.
HEAVY = ("ray", "torch", "transformers", "peft", "deepspeed", "vllm", "accelerate")
# First-party code outside the product: it may import the product, never the other way round.
ABOVE = ("tests", "bench", "scripts")


def may_import_table(text: str) -> dict[str, set[str]]:
    """Room -> the rooms it may import, from the "Layout and import rules" table. A cell names
    rooms in backticks (each with the rooms inside it), starts "nothing from" and names the
    rooms it may not import, or names none (only itself)."""
    section = text.split("## Layout and import rules", 1)
    if len(section) != 2:
        raise ValueError("docs/architecture.md has no '## Layout and import rules' section")
    rules: dict[str, set[str]] = {}
    for line in section[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        room = cells[0].strip("`").rstrip("/") if len(cells) == 3 else ""
        if room not in ROOMS:
            continue
        named = {n.rstrip("/") for n in re.findall(r"`([^`]+)`", cells[2])}
        unknown = named - set(ROOMS)
        if unknown:
            raise ValueError(f"room {room}: 'may import' names {sorted(unknown)}, not rooms")
        nothing_from = cells[2].lower().startswith("nothing from")
        if nothing_from:
            rules[room] = {r for r in ROOMS if not any(inside(r, n) for n in named)} - {room}
        else:
            rules[room] = {r for r in ROOMS if any(inside(r, n) for n in named)}
    missing = set(ROOMS) - set(rules)
    if missing:
        raise ValueError(f"the import-rules table has no row for {sorted(missing)}")
    return rules


def inside(room: str, outer: str) -> bool:
    """`room` is `outer` or nested in it."""
    return room == outer or room.startswith(outer + "/")


def room_of(module: str, rooms: Iterable[str]) -> str | None:
    """The innermost room holding a dotted module name (None: not first-party product)."""
    path = module.replace(".", "/")
    held = [r for r in rooms if path == r or path.startswith(r + "/")]
    return max(held, key=len, default=None)


def imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every static import in the file of `module`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module or ""
            else:  # relative: `from .x import y` in package a.b is a.b.x
                base = (
                    package[: len(package) - node.level + 1] if node.level <= len(package) else []
                )
                yield node.lineno, ".".join(base + ([node.module] if node.module else []))


def violations(root: Path, rules: dict[str, set[str]]) -> list[str]:
    """`file:line: message` for each import under `root` that its room may not make."""
    found = []
    for path in sorted(
        p for top in {r.split("/")[0] for r in rules} for p in (root / top).rglob("*.py")
    ):
        rel = path.relative_to(root)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        room = room_of(module, rules)
        if room is None:
            continue
        allowed = rules[room]
        for line, target in sorted(imports(path, module)):
            top = target.split(".")[0]
            other = top if top in ABOVE else room_of(target, rules)
            if other is not None and other != room and other not in allowed:
                may = ", ".join(sorted(allowed)) or "no other room"
                found.append(f"{rel}:{line}: {room} imports {target} (may import: {may})")
    return found


def test_rules_are_read_from_the_architecture_table():
    rules = may_import_table(ARCHITECTURE.read_text())
    hazard = {"hazard", *INNER}
    assert rules == {
        "hazard": INNER,
        "hazard/core": set(),
        "hazard/augment": {"hazard/core"},
        "hazard/config": {"hazard/core", "hazard/augment"},
        "hazard/infra": {"hazard/core", "hazard/config"},
        "hazard/model": {"hazard/core", "hazard/config", "hazard/infra"},
        "pipelines": hazard,
        "ray_jobs": hazard | {"pipelines"},
        "serve": hazard,
    }


def test_every_product_module_keeps_the_import_rules():
    found = violations(REPO, may_import_table(ARCHITECTURE.read_text()))
    assert not found, "imports that docs/architecture.md's rules forbid:\n" + "\n".join(found)


def test_the_domain_core_augment_ops_and_configs_import_no_ml_stack():
    """hazard/core, hazard/augment and hazard/config load without Ray, torch or transformers."""
    found = [
        f"{path.relative_to(REPO)}:{line}: {target}"
        for room in ("core", "augment", "config")
        for path in sorted((REPO / "hazard" / room).rglob("*.py"))
        for line, target in imports(path, f"hazard.{room}.{path.stem}")
        if target.split(".")[0] in HEAVY
    ]
    assert found == []


def test_a_nested_room_keeps_its_own_rules(tmp_path):
    rules = {"hazard": {"hazard/core"}, "hazard/core": set(), "serve": {"hazard", "hazard/core"}}
    for room in ("hazard", "hazard/core", "serve"):
        (tmp_path / room).mkdir(parents=True)
    (tmp_path / "hazard" / "cli.py").write_text("from hazard.core import labels\n")
    (tmp_path / "hazard" / "core" / "labels.py").write_text("from hazard import cli\nimport json\n")
    (tmp_path / "serve" / "app.py").write_text("from hazard.core.labels import X\n")
    assert violations(tmp_path, rules) == [
        "hazard/core/labels.py:1: hazard/core imports hazard (may import: no other room)",
    ]


def test_a_planted_violation_is_named_by_file_and_line(tmp_path):
    rules = {"hazard": set(), "ray_jobs": {"hazard"}, "serve": {"hazard"}}
    for room in rules:
        (tmp_path / room).mkdir()
        (tmp_path / room / "__init__.py").write_text("")
    (tmp_path / "hazard" / "core.py").write_text("import json\nfrom . import labels\n")
    (tmp_path / "serve" / "engines.py").write_text("from hazard.core import x\n")
    (tmp_path / "ray_jobs" / "job.py").write_text(
        "import hazard.core\n\n\ndef run():\n    from serve.engines import make_engine\n"
    )
    (tmp_path / "serve" / "app.py").write_text("from .engines import x\nimport tests.fixtures\n")
    assert violations(tmp_path, rules) == [
        "ray_jobs/job.py:5: ray_jobs imports serve.engines (may import: hazard)",
        "serve/app.py:2: serve imports tests.fixtures (may import: hazard)",
    ]


def test_a_relative_import_counts_as_its_absolute_module(tmp_path):
    (tmp_path / "serve" / "sub").mkdir(parents=True)
    path = tmp_path / "serve" / "sub" / "mod.py"
    path.write_text("from .. import app\nfrom ..engines import x\nfrom . import y\n")
    assert list(imports(path, "serve.sub.mod")) == [
        (1, "serve"),
        (2, "serve.engines"),
        (3, "serve.sub"),
    ]


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("nothing from `pipelines/`, `ray_jobs/`, `serve/`", INNER),
        ("nothing from `serve/`", INNER | {"pipelines", "ray_jobs"}),
        ("`hazard/core`, `pipelines`", {"hazard/core", "pipelines"}),
        ("`hazard`", INNER | {"hazard"}),
        ("only itself", set()),
    ],
)
def test_the_may_import_column_is_read_both_ways(cell, expected):
    rows = {room: "`hazard`" for room in ROOMS} | {"hazard": cell}
    table = "\n".join(f"| `{room}/` | code | {rows[room]} |" for room in ROOMS)
    rules = may_import_table(f"## Layout and import rules\n\n{table}\n\n## Next\n")
    assert rules["hazard"] == expected


def test_a_table_that_names_an_unknown_room_is_refused():
    table = "\n".join(f"| `{room}/` | code | `hazard`, `utils` |" for room in ROOMS)
    with pytest.raises(ValueError, match=r"names \['utils'\], not rooms"):
        may_import_table(f"## Layout and import rules\n\n{table}\n")
