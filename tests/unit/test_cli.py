"""The `hazard` command: every subcommand answers --help with its own options."""

from __future__ import annotations

import pytest

from hazard.cli import main

SUBCOMMANDS = {
    ("data", "prepare"): "--config",
    ("data", "synth"): "--n-per-label",
    ("train",): "--config",
    ("calibrate",): "--config",
    ("score-dataset",): "--config",
    ("eval",): "--model",
    ("serve",): "--port",
    ("score",): "--url",
    ("demo",): "--n-per-label",
    ("model", "build-tiny"): "--steps",
}


@pytest.mark.parametrize("words, option", SUBCOMMANDS.items(), ids=" ".join)
def test_subcommand_help(words, option, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*words, "--help"])
    assert exc.value.code == 0
    assert option in capsys.readouterr().out


def test_bad_config_is_a_clear_error_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: base\nmodel: {name: x, path: tiny}\nbogus: 1\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "data_dir" in err
