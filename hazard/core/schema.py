"""The sample and quarantine Arrow schemas that every data stage reads and writes.

Every stage accounts for every row: rows in = rows out + rows rejected (by reason), and
rejected rows land in a quarantine table with the QUARANTINE_SCHEMA.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

IMAGE_PLACEHOLDER = "<image>"  # an image's place in a stored turn (LLaMA-Factory, LLaVA)

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("images", pa.list_(pa.binary()), nullable=False),  # encoded bytes, one per image
        pa.field("task", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        # label, letter, score or boxes as text; null on unlabelled rows (a submission set's
        # test split, `source.unlabelled_splits`), which are never augmented or trained on
        pa.field("answer", pa.string()),
        pa.field("split", pa.string(), nullable=False),  # train | val | test
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),  # sha256 of the image bytes
        pa.field("parent_id", pa.string()),  # set on augmented rows
        pa.field("aug_ops", pa.list_(pa.string())),  # augmentation provenance, in order applied
        # multi-turn sources: JSON [{"role": "user"|"assistant"|"system", "content": "..."}] with
        # "<image>" placeholders; prompt/answer are then the last user and assistant turns
        pa.field("conversation", pa.string()),
        # p(answer) under the consistency filter's model, when that filter ran
        pa.field("consistency_score", pa.float32()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # short machine-readable code
        pa.field("detail", pa.string()),  # human-readable message
    ]
)

SPLITS: tuple[str, ...] = ("train", "val", "test")


def content_hash(images: list[bytes]) -> str:
    """sha256 over the sha256 of each encoded image's bytes, in order."""
    h = hashlib.sha256()
    for data in images:
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()
