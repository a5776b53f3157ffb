"""hazard-cascade's library, in rooms by purpose (docs/architecture.md, "Layout and import
rules", says what each may import; tests/unit/test_layering.py enforces it):

core/     labels, tasks, answers, fusion and cascade maths, metrics, schema, StrictModel (pure)
augment/  augmentation ops in one registry (PIL + numpy)
config/   every job's config model and the YAML loader
infra/    storage (local, file://, s3://), the model bundle, image decoding
model/    model loading and scoring, engines, LoRA/DeepSpeed, the training recipe's steps
deploy/   `hazard deploy` (needs the `deploy` extra: the Kubernetes client)
demo/     the demo kit: synthetic scenes, the tiny model, a local Ray head, the driver

Beside them: the `hazard` CLI (`cli.py`, which loads job modules by name when one runs), the
HTTP client (`client.py`) and the report plots (`reports.py`).
"""

__version__ = "0.1.0"
