"""The base of the clusters file's models: camelCase keys like the chart's values, unknown keys
are errors, values frozen once read."""

from __future__ import annotations

from pydantic import ConfigDict
from pydantic.alias_generators import to_camel

from hazard.core.strict import StrictModel


class CamelModel(StrictModel):
    model_config = ConfigDict(alias_generator=to_camel, frozen=True)
