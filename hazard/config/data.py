"""Config of the data preparation job (`ray_jobs/prepare_data.py`, `configs/*/data.yaml`).

Every model forbids unknown keys, so a typo in a YAML file or a `--set` override is an error.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from hazard.augment.colour import HueBand
from hazard.augment.registry import check_names, param_models
from hazard.config.storage import StorageConfig
from hazard.core.strict import StrictModel
from hazard.core.tasks import MIXED, get_task

ImageFormat = Literal["PNG", "JPEG", "WEBP"]
MIXED_FORMATS = ("flare", "llava")


class SourceConfig(StrictModel):
    """Where the labelled images come from: a local folder or an `s3://` prefix."""

    format: Literal["folder", "llamafactory", "llava", "flare"] = Field(
        "folder",
        description="Source layout. 'folder': <uri>/<labels_file>, a CSV `image,label[,split]` "
        "with image paths relative to the folder. 'llamafactory': <uri>/dataset_info.json, whose "
        "entry `dataset` names the JSON/JSONL file and its formatting (sharegpt or alpaca) and "
        "column/tag mappings. 'llava': <uri>/<annotations>, a JSON list of {id, image, "
        "conversations: [{from: human|gpt, value}]}, image paths relative to <uri>/<image_dir>. "
        "'flare': <uri>/<annotations>, a FLARE 2025 question file [{TaskType, Modality, "
        "ImageName, Question, Answer, Split}], ImageName (one or a list) relative to "
        "<uri>/<image_dir>.",
    )
    uri: str = Field(
        description="The source folder: a local path, file:// or s3://bucket/prefix URI."
    )
    labels_file: str = Field("labels.csv", description="folder: the CSV file inside the folder.")
    dataset: str | None = Field(
        None,
        description="llamafactory: the dataset_info.json entry to import (None: the only entry, "
        "or an error listing the entries). Exclusive with `splits`.",
    )
    splits: dict[Literal["train", "val", "test"], str] | None = Field(
        None,
        description="llamafactory: {split: dataset_info.json entry}, e.g. {train: "
        "image2text_train, val: image2text_dev, test: image2text_test}: every entry is imported "
        "in one run and its rows get that split (none is drawn). Exclusive with `dataset`.",
    )
    unlabelled_splits: list[Literal["test"]] = Field(
        default_factory=list,
        description="llamafactory with `splits`: splits whose rows may come without an answer "
        "(a submission set's test rows): such a row is kept with answer None and its own id, "
        "and is never augmented, filtered or trained on. Elsewhere an empty answer is rejected.",
    )
    annotations: str = Field(
        "annotations.json",
        description="llava/flare: the annotation (FLARE: question) file inside the folder.",
    )
    image_dir: str = Field(
        ".", description="llava/llamafactory/flare: folder the image paths are relative to."
    )
    split_field: str | None = Field(
        None,
        description="flare: the row key whose value is the row's split (FLARE: 'Split'; "
        "train/training, val/validation/dev, test/testing; other values: bad_split). None: "
        "splits are drawn (`split`).",
    )
    task_field: str | None = Field(
        None,
        description="task: mixed: the row key naming the row's task type (flare: default "
        "'TaskType'; llava: None infers the task from the answer's shape, see "
        "pipelines/row_task.py).",
    )
    task_map: dict[str, str] = Field(
        default_factory=dict,
        description="task: mixed: {task type value: registered task}, over the format's "
        "defaults (flare: pipelines/row_task.FLARE_TASKS); values are matched case-, space-, "
        "'_'- and '-'-insensitively; a value mapped nowhere is quarantined (unknown_task).",
    )

    @field_validator("task_map")
    @classmethod
    def _registered_targets(cls, task_map: dict[str, str]) -> dict[str, str]:
        for value, task in task_map.items():
            try:
                get_task(task)
            except ValueError as exc:
                raise ValueError(f"task_map[{value!r}]: {exc}") from None
        return task_map

    @model_validator(mode="after")
    def _splits_consistent(self) -> SourceConfig:
        if self.split_field is not None and self.format != "flare":
            raise ValueError(f"source.split_field is for format flare, not {self.format!r}")
        if self.splits is None:
            if self.unlabelled_splits:
                raise ValueError("source.unlabelled_splits needs source.splits (split -> entry)")
            return self
        if self.format != "llamafactory":
            raise ValueError(f"source.splits is for format llamafactory, not {self.format!r}")
        if self.dataset is not None:
            raise ValueError(
                "source.dataset and source.splits are exclusive: name one entry, or one per split"
            )
        if not self.splits:
            raise ValueError("source.splits is empty; map at least one split to an entry")
        entries = list(self.splits.values())
        repeated = sorted({e for e in entries if entries.count(e) > 1})
        if repeated:
            raise ValueError(f"source.splits names entry(ies) {repeated} for several splits")
        missing = sorted(set(self.unlabelled_splits) - set(self.splits))
        if missing:
            raise ValueError(f"source.unlabelled_splits {missing} are not keys of source.splits")
        return self


class SplitConfig(StrictModel):
    """How rows whose source gives no split are assigned one (seeded, stratified by answer)."""

    fractions: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1},
        description="Share of each split; keys among train/val/test, values summing to 1.",
    )
    seed: int = Field(0, description="Seed of the assignment; same seed and rows, same split.")

    @field_validator("fractions")
    @classmethod
    def _valid_fractions(cls, fractions: dict[str, float]) -> dict[str, float]:
        unknown = set(fractions) - {"train", "val", "test"}
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; use train, val, test")
        if any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
            raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}")
        return fractions


class ValidationConfig(StrictModel):
    """Which images the decode stage accepts, and how it brings them to the model's budget.

    Images over `pixel_budget` are downscaled (aspect kept), not rejected; only images past the
    decode guard (`max_bytes`, `max_side`, `max_pixels`) are quarantined.
    """

    min_side: int = Field(32, ge=1, description="Reject ('too_small') if width or height is below.")
    max_side: int = Field(
        16384, ge=1, description="Decode guard: reject ('too_large') if a side is above."
    )
    max_pixels: int = Field(
        64_000_000,
        ge=1,
        description="Decode guard: reject ('too_large') images of more pixels (decompression "
        "bombs) before decoding them.",
    )
    max_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1,
        description="Reject ('too_many_bytes') encoded images larger than this (bytes).",
    )
    allowed_formats: list[ImageFormat] = Field(
        default_factory=lambda: ["PNG", "JPEG", "WEBP"],
        min_length=1,
        description="Encoded formats accepted as PIL names them; others: 'unsupported_format'.",
    )
    pixel_budget: int | None = Field(
        1_003_520,
        ge=1,
        description="Downscale images of more pixels to at most this many, aspect kept (the "
        "model's max_pixels; Qwen2.5-VL's default is 1280*28*28). None keeps full size.",
    )
    encode_format: Literal["auto", "JPEG", "PNG", "WEBP"] = Field(
        "auto",
        description="Format of re-encoded images (rotated by EXIF, downscaled, converted or "
        "augmented): 'auto' keeps JPEG for JPEG sources and PNG otherwise. Images that need no "
        "change are stored byte for byte.",
    )
    jpeg_quality: int = Field(90, ge=50, le=100, description="JPEG/WEBP quality when re-encoding.")

    @model_validator(mode="after")
    def _sides_ordered(self) -> ValidationConfig:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) > max_side ({self.max_side})")
        return self


class AugmentConfig(StrictModel):
    """VL-ADAS augmentation of the train split (val/test are never augmented).

    Each copy draws its parameters from (seed, sample id, copy index) and applies the listed ops
    in a fixed order: scale, rotate, crop, hflip, vflip (one geometric resample), then hsv.
    Hazards stay in frame: scale, rotation and crop are bounded, and the crop only takes what a
    scale-up left, so together they keep at least min(crop_min_area, 1 / scale^2) of the image.
    The hsv jitter never touches pixels whose colour falls in `protected_hues` (warning reds,
    oranges, yellows).

    The ops and their parameters come from the op registry (`hazard.augment`): `ops` and
    `labels.*.ops` take the registered names, and each registered op's parameter model owns
    flat keys of this config (`scale_range`, `rotate_max_deg`, `crop_min_area`, `flip_prob`,
    `hue_shift_deg`, `saturation_range`, `value_range`, `protected_hues` for the built-in
    ones, described in `hazard.augment.ops`), validated by that model; any other key is an
    error.
    """

    _op_params: dict[type[StrictModel], StrictModel] = PrivateAttr(default_factory=dict)
    """The registered ops' keys, validated: {parameter model: its instance}."""

    HueBand: ClassVar[type[HueBand]] = HueBand

    class LabelRule(StrictModel):
        """Overrides for the rows of one label (the row's `answer`); None keeps the default."""

        copies: int | None = Field(None, ge=0, le=64, description="Copies per row of this label.")
        ops: list[str] | None = Field(
            None, description="Ops for this label (registered names, as in `ops`)."
        )

        @field_validator("ops")
        @classmethod
        def _registered_ops(cls, ops: list[str] | None) -> list[str] | None:
            return ops if ops is None else check_names(ops)

    copies: int = Field(
        2, ge=0, le=64, description="Augmented rows added per train sample (0 disables)."
    )
    ops: list[str] = Field(
        default_factory=lambda: ["scale", "rotate", "crop", "hflip", "hsv"],
        description="Registered ops each copy applies, always in the registry's order (scale, "
        "rotate, crop, hflip, vflip, hsv for the built-ins; list order does not matter). Flips "
        "happen with probability `flip_prob` (always when the list has only flips); the others "
        "always, with random parameters.",
    )
    labels: dict[str, LabelRule] = Field(
        default_factory=dict,
        description="Per-label overrides of `copies` and `ops`, keyed by label (the row's "
        "answer), e.g. {high_risk: {copies: 6}}; labels not listed use the defaults.",
    )
    seed: int = Field(0, description="Seed; each copy is drawn from (seed, sample id, copy index).")
    store: Literal["images", "recipes"] = Field(
        "images",
        description="What the data job writes for a copy. 'images': its encoded pixels. "
        "'recipes': no image bytes (empty `images`), only `parent_id` and `aug_ops`; the "
        "training ingest re-plans the copy from this config (recorded in lineage.json) and "
        "applies it to the parent's bytes (pipelines.augment.apply_recipe), the same "
        "function that makes the stored copies, so the pixels are the same.",
    )
    resample: Literal["bilinear", "bicubic"] = Field(
        "bilinear", description="Interpolation of the geometric resample (bicubic is ~3x slower)."
    )
    padding: Literal["auto", "edge", "reflect", "constant"] = Field(
        "auto",
        description="Fill of the area rotation and scale-down uncover. 'auto' chooses per image "
        "from its border: flat (std <= pad_flat_std) -> constant (the border's mean colour); "
        "textured (mean neighbour difference >= pad_texture_grad) -> reflect; else edge.",
    )
    pad_flat_std: float = Field(
        4.0, ge=0.0, description="auto padding: border std (0-255 units) at or below = flat."
    )
    pad_texture_grad: float = Field(
        8.0,
        ge=0.0,
        description="auto padding: mean absolute difference of neighbouring border pixels "
        "(0-255 units) at or above = textured.",
    )

    @field_validator("ops")
    @classmethod
    def _registered_ops(cls, ops: list[str]) -> list[str]:
        return check_names(ops)

    @model_validator(mode="wrap")
    @classmethod
    def _split_op_params(cls, data: Any, handler: ModelWrapValidatorHandler) -> AugmentConfig:
        """Validate the own keys as usual and each registered op's keys by its parameter
        model (defaults filled in); any other key is an error."""
        if not isinstance(data, dict):
            return handler(data)
        own = {k: v for k, v in data.items() if k in cls.model_fields}
        rest = {k: v for k, v in data.items() if k not in cls.model_fields}
        config = handler(own)
        models = param_models()
        owned = {key: model for model in models for key in model.model_fields}
        clash = sorted(set(owned) & set(cls.model_fields))
        if clash:
            raise ValueError(f"op parameter key(s) {clash} clash with augment's own keys")
        unknown = sorted(set(rest) - set(owned))
        if unknown:
            raise ValueError(
                f"unknown key(s) {unknown}; augment takes its own keys "
                f"{sorted(cls.model_fields)} and the registered ops' {sorted(owned)}"
            )
        for model in models:
            given = {k: rest[k] for k in model.model_fields if k in rest}
            try:
                config._op_params[model] = model.model_validate(given)
            except ValidationError as exc:
                errors = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
                raise ValueError("; ".join(errors)) from None
        return config

    @model_serializer(mode="wrap")
    def _flat(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict:
        """The own keys and every op's keys side by side, as the config is written."""
        out = handler(self)
        for params in self._op_params.values():
            out.update(params.model_dump(mode=info.mode))
        return out

    def __getattr__(self, name: str) -> Any:
        """An op parameter by its key (e.g. `cfg.scale_range`)."""
        private = object.__getattribute__(self, "__pydantic_private__") or {}
        for params in private.get("_op_params", {}).values():
            if name in type(params).model_fields:
                return getattr(params, name)
        return super().__getattr__(name)

    @model_validator(mode="after")
    def _ops_when_enabled(self) -> AugmentConfig:
        for label in [None, *self.labels]:
            copies, ops = self.rule_for(label)
            if copies > 0 and not ops:
                where = "copies" if label is None else f"labels.{label}"
                raise ValueError(f"{where}: copies > 0 needs at least one op")
        return self

    def rule_for(self, label: str | None) -> tuple[int, list[str]]:
        """(copies, ops) of the rows whose answer is `label`."""
        rule = self.labels.get(label) if label is not None else None
        if rule is None:
            return self.copies, list(self.ops)
        copies = self.copies if rule.copies is None else rule.copies
        return copies, list(self.ops if rule.ops is None else rule.ops)

    @property
    def enabled(self) -> bool:
        """Whether any label gets copies."""
        return self.copies > 0 or any(r.copies for r in self.labels.values())

    def check_labels(self, labels: tuple[str, ...] | None) -> None:
        """ValueError if `labels` (a task's closed label set; None = free text) lacks a key of
        `self.labels`."""
        unknown = sorted(set(self.labels) - set(labels)) if labels is not None else []
        if unknown:
            raise ValueError(f"augment.labels: unknown label(s) {unknown}; known: {list(labels)}")


class ShardConfig(StrictModel):
    """Parquet output layout."""

    rows_per_file: int = Field(256, ge=1, description="Rows per Parquet shard (last one smaller).")


class RayConfig(StrictModel):
    """Resources of the Ray Data map stages."""

    num_cpus: float | None = Field(
        None, gt=0, description="CPUs reserved per map task (None: Ray's default, 1)."
    )
    batch_size: int = Field(32, ge=1, description="Rows per map_batches batch (and input block).")


class ConsistencyConfig(StrictModel):
    """Optional image-text consistency filter of augmented rows, scored by a model bundle."""

    enabled: bool = Field(False, description="Run the filter (needs model_uri).")
    model_uri: str | None = Field(
        None, description="Model bundle that scores rows (a stage's output_dir/model)."
    )
    margin: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Drop an augmented row when p(its label) is more than this below its "
        "parent's p(label).",
    )
    batch_size: int = Field(16, ge=1, description="Rows per scoring batch.")
    num_actors: int = Field(1, ge=1, description="Scoring actors (each loads the model once).")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per scoring actor.")
    gpus_per_actor: float = Field(
        0.0,
        ge=0,
        description="GPUs reserved per scoring actor; with 0 it scores on CPU (one log line).",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Weights dtype to score in (bfloat16 on GPU; kept as set on CPU).",
    )

    @model_validator(mode="after")
    def _model_when_enabled(self) -> ConsistencyConfig:
        if self.enabled and not self.model_uri:
            raise ValueError("consistency.enabled needs consistency.model_uri")
        return self


class DataConfig(StrictModel):
    """The data preparation job: import, decode/validate, split, augment, filter, write."""

    source: SourceConfig = Field(description="Where the labelled images come from.")
    output_dir: str = Field(
        description="Output folder or s3:// prefix: {split}/*.parquet, quarantine.parquet, "
        "lineage.json."
    )
    task: str = Field(
        "corridor_risk",
        description="Task name (hazard.core.tasks): prompt and labels of every row; or "
        f"'{MIXED}' (flare/llava sources): each row's task is given by `source.task_field` and "
        "`source.task_map`, or inferred, and recorded in its `task` column.",
    )
    storage: StorageConfig = Field(
        default_factory=StorageConfig,
        description="S3 endpoint/region overrides (credentials only from the environment).",
    )
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="Split assignment of rows without one."
    )
    validation: ValidationConfig = Field(
        default_factory=ValidationConfig, description="Image acceptance and pixel budget."
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Train-split augmentation."
    )
    consistency: ConsistencyConfig = Field(
        default_factory=ConsistencyConfig, description="Consistency filter of augmented rows."
    )
    shards: ShardConfig = Field(default_factory=ShardConfig, description="Parquet sharding.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray Data resources.")

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task != MIXED:
            get_task(task)
        return task

    @model_validator(mode="after")
    def _augment_labels(self) -> DataConfig:
        if self.task != MIXED:
            self.augment.check_labels(get_task(self.task).labels)
        return self

    @model_validator(mode="after")
    def _mixed_consistent(self) -> DataConfig:
        src = self.source
        if self.task != MIXED:
            if src.task_field is not None or src.task_map:
                raise ValueError(
                    f"source.task_field/task_map are for task: {MIXED}; task {self.task!r} "
                    "gives every row the same task"
                )
            return self
        if src.format not in MIXED_FORMATS:
            raise ValueError(
                f"task: {MIXED} needs a source format that names or shows each row's task "
                f"({', '.join(MIXED_FORMATS)}), not {src.format!r}"
            )
        if self.consistency.enabled:
            raise ValueError(
                f"the consistency filter scores one task's closed labels with one bundle; it "
                f"cannot score a task: {MIXED} job (disable consistency)"
            )
        if self.augment.labels:
            raise ValueError(f"augment.labels keys one task's labels; task: {MIXED} has none")
        return self
