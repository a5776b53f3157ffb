"""Every benchmark JSON that docs/benchmarks.md cites is in the repository and is valid JSON, so
each quoted figure can be checked against the file it names."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks.md"
CITATION = re.compile(r"bench/results/[^\s`'\"()<>]+\.json")


def expand_braces(path: str) -> list[str]:
    """`a-{x,y}.json` -> [`a-x.json`, `a-y.json`] (shell-style, any number of groups)."""
    parts = re.split(r"\{([^{}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(combo) for combo in itertools.product(*choices)]


def cited_files(text: str) -> list[str]:
    """The bench/results JSON paths a document cites, brace lists expanded, in order."""
    return [p for match in CITATION.findall(text) for p in expand_braces(match)]


def test_citations_are_found_in_the_forms_the_docs_use():
    text = (
        "(`bench/results/label_scoring-20261207T132709Z.json`), "
        "`bench/results/data_throughput-20261130-{fresh-300,reuse-600}.json`; the template "
        "`bench/results/<name>-<UTC stamp>.json` is not a file"
    )
    assert cited_files(text) == [
        "bench/results/label_scoring-20261207T132709Z.json",
        "bench/results/data_throughput-20261130-fresh-300.json",
        "bench/results/data_throughput-20261130-reuse-600.json",
    ]


def test_every_cited_benchmark_json_is_committed_and_valid():
    cited = cited_files(DOC.read_text())
    assert cited, "docs/benchmarks.md cites no bench/results JSON"
    missing = [p for p in cited if not (REPO / p).is_file()]
    assert not missing, f"cited in docs/benchmarks.md but not in the repository: {missing}"
    for path in cited:
        try:
            json.loads((REPO / path).read_text())
        except json.JSONDecodeError as exc:
            pytest.fail(f"{path} (cited in docs/benchmarks.md) is not valid JSON: {exc}")


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout"
)
def test_no_cited_benchmark_json_is_git_ignored():
    cited = sorted(set(cited_files(DOC.read_text())))
    out = subprocess.run(
        ["git", "check-ignore", "--no-index", *cited], cwd=REPO, capture_output=True, text=True
    )
    assert out.stdout.split() == [], f"git ignores cited benchmark JSON: {out.stdout.split()}"
