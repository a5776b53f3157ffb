"""Image augmentation (pure PIL + numpy, no Ray): the op registry (`registry`), the built-in
ops (`ops`, registered on import) and their geometry and colour maths (`geometry`, `colour`).
The plans that draw them (`pipelines/augment_plan.py`) and the Ray Data stage that runs them
(`pipelines/augment.py`) are in `pipelines/`."""

from hazard.augment import ops as _builtin_ops  # noqa: F401  (registers the built-in ops)
