"""Image augmentation (pure PIL + numpy, no Ray): the op registry (`registry`), the built-in
ops (`ops`, registered on import), their geometry and colour maths (`geometry`, `colour`) and
plans (`plan`). The Ray Data stage that uses them is `pipelines/augment.py`."""

from hazard.augment import ops as _builtin_ops  # noqa: F401  (registers the built-in ops)
