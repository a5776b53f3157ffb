"""The project stands alone: nothing outside docs/ points at a folder beside the clone.

Users clone the project by itself; what its code, tests, configs and chart use must be inside.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Built from parts so that this file does not match itself.
OUTSIDE = "../" + "shared"
DESIGN_NOTE = "shared/" + "DESIGN.md"


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
        ).stdout
        return [REPO / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an sdist)
        skip = {".git", ".venv", "runs", "__pycache__"}
        return [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.parts)]


def _offenders(paths: list[Path], root: Path) -> list[str]:
    """`file:line: text` of each line outside docs/ that names the folder beside the clone."""
    found = []
    for path in paths:
        rel = path.relative_to(root)
        if rel.parts[0] == "docs" or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (images)
        for i, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if OUTSIDE in line or DESIGN_NOTE in line:
                found.append(f"{rel}:{i}: {line.strip()}")
    return found


def test_no_file_outside_docs_refers_to_a_folder_beside_the_clone():
    offenders = _offenders(_tracked_files(), REPO)
    assert not offenders, "files refer outside the clone:\n" + "\n".join(offenders)


def test_the_scan_sees_a_reference_and_skips_docs(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "history.md").write_text(f"was read from {OUTSIDE}/reference\n")
    (tmp_path / "ok.py").write_text("CRDS = 'tests/fixtures/kuberay-crds'\n")
    (tmp_path / "bad.py").write_text(f'CRDS = "{OUTSIDE}/reference"\n')
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert _offenders(files, tmp_path) == [f'bad.py:1: CRDS = "{OUTSIDE}/reference"']


def test_test_files_have_unique_basenames():
    """tests/unit and tests/integration are not packages: pytest imports each test file by its
    basename, and a second file of the same name stops `make test` at collection."""
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_tests_share_code_only_through_tests_helpers():
    """A test module imports shared code from `tests.helpers.<subject>` only: never from another
    test module (whose tests would run twice and whose fixtures leak), and the only helper
    modules are those in tests/helpers/."""
    import ast

    wrong = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[1] not in ("helpers", "fixtures") and not path.name.startswith(
            ("test_", "conftest", "__init__")
        ):
            wrong.append(f"{rel}: a helper module outside tests/helpers/")
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                last = name.split(".")[-1]
                if last.startswith("test_") or last.endswith("_fixtures"):
                    wrong.append(f"{rel}:{node.lineno}: imports {name}")
    assert wrong == []
