"""`StrictModel`: the one base of every config and metadata model.

Unknown keys are errors, so a typo in a YAML file, a `--set` override, a clusters file or a
bundle's `meta.json` fails with the key's name instead of being ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that forbids keys it does not declare."""

    model_config = ConfigDict(extra="forbid")
