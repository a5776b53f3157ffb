#!/usr/bin/env python3
"""Copy `ServeConfig`'s JSON schema into the chart's values.schema.json.

`serve.app.args` of charts/hazard-cascade is a `hazard.config.serve.ServeConfig` passed to
`serve.app:build_app` unchanged, so the chart validates it with ServeConfig's own schema
(`ServeConfig.model_json_schema()`), kept under `definitions` as `ServeConfig` and
`ServeConfig.<Model>`. Run this after changing hazard/config/serve.py; the chart tests fail
while the copy differs.

Usage::

    python scripts/sync_chart_schema.py          # rewrite the definitions in values.schema.json
    python scripts/sync_chart_schema.py --check  # exit 1 if they differ
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "charts" / "hazard-cascade" / "values.schema.json"
PREFIX = "ServeConfig"


def serve_config_definitions() -> dict:
    """`{"ServeConfig": ..., "ServeConfig.<Model>": ...}` with refs into `#/definitions/`."""
    sys.path.insert(0, str(REPO))
    from hazard.config.serve import ServeConfig

    schema = ServeConfig.model_json_schema(ref_template=f"#/definitions/{PREFIX}.{{model}}")
    nested = schema.pop("$defs", {})
    out = {PREFIX: schema}
    out.update({f"{PREFIX}.{name}": node for name, node in sorted(nested.items())})
    return out


def synced(values_schema: dict) -> dict:
    """`values_schema` with its ServeConfig definitions replaced by freshly generated ones."""
    defs = {
        k: v
        for k, v in values_schema["definitions"].items()
        if k != PREFIX and not k.startswith(PREFIX + ".")
    }
    defs.update(serve_config_definitions())
    return {**values_schema, "definitions": defs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report a difference")
    args = parser.parse_args(argv)
    current = json.loads(SCHEMA.read_text())
    wanted = synced(current)
    if args.check:
        if wanted != current:
            print(f"{SCHEMA}: ServeConfig definitions are stale; run {__file__}", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(json.dumps(wanted, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
