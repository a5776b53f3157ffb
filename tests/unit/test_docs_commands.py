"""The command blocks of README.md and k8s/README.md name things that exist and configs that load.

Each `bash` block is read line by line (continuations joined). For every command:
- `hazard SUB…`: the subcommand exists and every `--option` it is given is one it takes;
- `python -m MODULE` (also inside `ray job submit -- …`): the module exists;
- `--config FILE` / `-f FILE` / `kubectl apply -f FILE`: the file exists; configs load into
  their job's model with the `--set` overrides given;
- `make TARGET`: the Makefile has the target.
The blocks themselves were run by hand on a fresh machine (see the README); this keeps them true.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from hazard.cli import main as hazard_main
from hazard.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "k8s" / "README.md"]
BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def _commands(doc: Path) -> list[list[str]]:
    """Each command of each bash block as argv words (comments dropped, `;`/`&` split)."""
    commands = []
    for block in BLOCK.findall(doc.read_text()):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            current: list[str] = []
            for w in [*words, ";"]:
                if w in (";", "&", "&&", "|"):
                    if current:
                        commands.append(current)
                    current = []
                elif w.endswith(";") and len(w) > 1:
                    current.append(w[:-1])
                    commands.append(current)
                    current = []
                else:
                    current.append(w)
    return commands


def _strip_env(words: list[str]) -> list[str]:
    """Drop leading `VAR=value` words and `export`."""
    i = 0
    while i < len(words) and (re.match(r"^[A-Z_][A-Z0-9_]*=", words[i]) or words[i] == "export"):
        i += 1
    return words[i:]


def _model_for_module(module: str):
    from hazard.config.data import DataConfig
    from hazard.config.score import ScoreDatasetConfig
    from hazard.config.serve import ServeConfig
    from hazard.config.train import TrainConfig
    from ray_jobs.calibrate import CalibrateConfig

    return {
        "ray_jobs.prepare_data": DataConfig,
        "ray_jobs.train": TrainConfig,
        "ray_jobs.calibrate": CalibrateConfig,
        "ray_jobs.score_dataset": ScoreDatasetConfig,
        "serve.command": ServeConfig,
    }.get(module)


HAZARD_MODULES = {
    ("data", "prepare"): "ray_jobs.prepare_data",
    ("train",): "ray_jobs.train",
    ("calibrate",): "ray_jobs.calibrate",
    ("score-dataset",): "ray_jobs.score_dataset",
    ("serve",): "serve.command",
}


def _option_value(words: list[str], *names: str) -> list[str]:
    values = []
    for i, w in enumerate(words):
        for name in names:
            if w == name and i + 1 < len(words):
                values.append(words[i + 1])
            elif w.startswith(name + "="):
                values.append(w.split("=", 1)[1])
    return values


def _check_config(module: str, words: list[str]) -> None:
    model = _model_for_module(module)
    for cfg in _option_value(words, "--config"):
        assert (REPO / cfg).is_file(), f"{cfg} does not exist"
        if model is not None:
            load_config(REPO / cfg, model, _option_value(words, "--set"))


def _check_hazard(words: list[str], capsys) -> None:
    sub = [w for w in words[1:] if not w.startswith("-")]
    head = sub[:2] if sub[:1] in (["data"], ["model"]) else sub[:1]
    module = HAZARD_MODULES.get(tuple(head))
    with pytest.raises(SystemExit) as exc:
        hazard_main([*head, "--help"])
    assert exc.value.code == 0, f"`hazard {' '.join(head)}` is not a subcommand"
    help_text = capsys.readouterr().out
    for w in words:
        if w.startswith("--"):
            assert w.split("=")[0] in help_text, f"`hazard {' '.join(head)}` has no {w}"
    if module:
        _check_config(module, words)


def _check_python_module(words: list[str]) -> None:
    i = words.index("-m")
    module = words[i + 1]
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    _check_config(module, words[i + 2 :])


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))


CASES = [(doc, cmd) for doc in DOCS for cmd in _commands(doc)]


def test_the_docs_have_commands():
    assert len([c for d, c in CASES if d.name == "README.md" and d.parent == REPO]) >= 10


@pytest.mark.parametrize(
    "doc, words", CASES, ids=[f"{d.relative_to(REPO)}:{' '.join(c)[:60]}" for d, c in CASES]
)
def test_command_names_what_exists(doc: Path, words: list[str], capsys):
    words = _strip_env(words)
    if not words:
        return
    if words[0] == "hazard":
        _check_hazard(words, capsys)
    if "-m" in words and "python" in " ".join(words):
        _check_python_module(words)
    if words[0] == "make":
        assert set(words[1:]) <= _makefile_targets(), words
    if words[0] in ("helm", "kubectl"):
        for f in _option_value(words, "-f"):
            assert (REPO / f).is_file(), f"{doc.name}: {f} does not exist"
        for w in words:
            if w.startswith("charts/"):
                assert (REPO / w).exists(), f"{doc.name}: {w} does not exist"


def test_the_checker_catches_a_wrong_option(capsys):
    with pytest.raises(AssertionError, match="no --bogus"):
        _check_hazard(["hazard", "score", "x.png", "--bogus", "1"], capsys)
    with pytest.raises(AssertionError, match="does not exist"):
        _check_python_module(["python", "-m", "ray_jobs.train", "--config", "configs/nope.yaml"])


def test_the_readme_stays_a_newcomers_page():
    """At most 150 lines: details go to docs/ and CONTRIBUTING.md, which the README links."""
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= 150, f"README.md has {lines} lines; move details to docs/"
