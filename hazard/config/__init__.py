"""Config models (pydantic) and the one YAML loader every job uses.

Each job reads one YAML file from `configs/` and may override keys from the command line with
dotted paths, e.g. `--set train.max_steps=50 --set data.seed=3`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file is missing, unreadable or fails validation."""


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `key.sub=value` overrides; values are parsed as YAML scalars (`3`, `true`, `[1,2]`)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_config(path: str | Path | None, model: type[M], overrides: list[str] | None = None) -> M:
    """Read a YAML file into `model`, applying overrides; errors name the file and the field.

    `path` None: the model's defaults, with the overrides.
    """
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        where = path if path is not None else "defaults (no --config file given)"
        raise ConfigError(f"{where}: invalid config:\n{exc}") from exc


def add_config_args(
    parser: argparse.ArgumentParser, example: str, config_required: bool = True
) -> None:
    """The `--config FILE` and repeatable `--set KEY=VALUE` options every job takes."""
    parser.add_argument(
        "--config",
        required=config_required,
        help="YAML file under configs/" + ("" if config_required else " (default: defaults)"),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key (dotted path), repeatable, e.g. --set {example}",
    )


def load_job_config(args: argparse.Namespace, model: type[M]) -> M | None:
    """`load_config` from parsed job options; prints the error and returns None when invalid."""
    try:
        return load_config(args.config, model, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return None
