"""Training checkpoints: what each rank saves, and a resume that checks before it unpickles.

A checkpoint directory (one per reported step; Ray Train merges the ranks' folders):

    deepspeed/ds/...               DeepSpeed state without the frozen base
                                   (exclude_frozen_parameters): LoRA weights, optimizer,
                                   scheduler; one optimizer partition per rank
    adapter/                       the LoRA adapter (PEFT, safetensors), from rank 0
    train_state.json               hazard.model.training.state.TrainState, from rank 0
    rng.rank<r>.safetensors/.json  each rank's torch / numpy / python RNG state
    manifest.rank<r>.json          {"run_name", "step", "rank", "world_size",
                                    "files": {path: sha256}}

DeepSpeed's loader unpickles (`torch.load(weights_only=False)`), so `load_checkpoint` first
verifies every manifest: the run name must be this run's, every listed file must match its
sha256, and no file may be there that no manifest lists. Only then is anything loaded.

A run resumes only on the worker count it saved with: ZeRO partitions the optimizer state
per worker and DeepSpeed re-partitions it only for elastic checkpoints (off here); each rank's
RNG state and data-shard position belong to that count too. `load_checkpoint` refuses another
count before it loads anything (WorldSizeMismatch, naming both counts).
"""

from __future__ import annotations

import json
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hazard.infra.storage import sha256_file
from hazard.model.training.state import TrainState

DS_DIR, DS_TAG = "deepspeed", "ds"
ADAPTER_DIR = "adapter"
STATE_FILE = "train_state.json"


class CheckpointIntegrityError(RuntimeError):
    """A checkpoint failed verification; nothing of it was loaded."""


class WorldSizeMismatch(RuntimeError):
    """A checkpoint was saved by another number of workers; nothing of it was loaded."""

    def __init__(self, ckpt_dir: Path, saved: int, current: int):
        self.ckpt_dir, self.saved, self.current = ckpt_dir, saved, current
        super().__init__(
            f"{ckpt_dir}: checkpoint saved by {saved} workers, this run has {current}; a run "
            f"resumes only on the worker count it saved with (ZeRO partitions the optimizer "
            f"state per worker; elastic checkpoints are off). Resume with "
            f"scaling.num_workers={saved}, or start a new run under another run_name"
        )

    def __reduce__(self):  # picklable: Ray carries it from the worker to the driver
        return type(self), (self.ckpt_dir, self.saved, self.current)


def current_world_size() -> int:
    """Workers of this run: torch.distributed's world size, 1 when it is not initialised."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _manifest_name(rank: int) -> str:
    return f"manifest.rank{rank}.json"


def _gathered(engine):
    """Under ZeRO-3 a context that gathers the trainable (LoRA) weights on every rank."""
    if engine.zero_optimization_stage() != 3:
        return nullcontext()
    import deepspeed

    trainable = [p for p in engine.module.parameters() if p.requires_grad]
    return deepspeed.zero.GatheredParameters(trainable, modifier_rank=None)


def save_checkpoint(engine, out_dir: Path, rank: int, run_name: str, state: TrainState) -> None:
    """Write this rank's part of the checkpoint into `out_dir` (a collective: every rank calls
    it), then its manifest (with the run's world size)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(
        str(out_dir / DS_DIR), tag=DS_TAG, save_latest=False, exclude_frozen_parameters=True
    )
    with _gathered(engine):
        if rank == 0:
            engine.module.save_pretrained(str(out_dir / ADAPTER_DIR), safe_serialization=True)
    if rank == 0:
        (out_dir / STATE_FILE).write_text(json.dumps(state.to_dict(), indent=1))
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(out_dir / f"rng.rank{rank}.safetensors"))
    np_state = np.random.get_state()
    (out_dir / f"rng.rank{rank}.json").write_text(
        json.dumps(
            {
                "python": [random.getstate()[0], list(random.getstate()[1]), None],
                "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
            }
        )
    )
    files = {
        p.relative_to(out_dir).as_posix(): sha256_file(p)
        for p in sorted(out_dir.rglob("*"))
        if p.is_file() and not p.name.startswith("manifest.rank")
    }
    manifest = {
        "run_name": run_name,
        "step": state.step,
        "rank": rank,
        "world_size": current_world_size(),
        "files": files,
    }
    (out_dir / _manifest_name(rank)).write_text(json.dumps(manifest, indent=1))


def _saved_world_size(manifests: list[dict], ckpt_dir: Path) -> int:
    """The worker count a checkpoint was saved with: its manifests' `world_size` (checkpoints
    written before it was recorded: one manifest per rank, so their number)."""
    sizes = {m.get("world_size", len(manifests)) for m in manifests}
    if len(sizes) != 1:
        raise CheckpointIntegrityError(f"{ckpt_dir}: manifests of different world sizes {sizes}")
    size = sizes.pop()
    ranks = sorted(m.get("rank") for m in manifests)
    if ranks != list(range(size)):
        raise CheckpointIntegrityError(
            f"{ckpt_dir}: saved by {size} workers but holds the manifests of ranks {ranks}"
        )
    return size


def verify_checkpoint(ckpt_dir: Path, run_name: str, world_size: int | None = None) -> int:
    """Check a checkpoint against its manifests; returns its step. Raises
    CheckpointIntegrityError naming the first file that is missing, altered or unlisted, and,
    when `world_size` is given, WorldSizeMismatch if it was saved by another worker count
    (checked before any file is hashed)."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / _manifest_name(0)).is_file():
        raise CheckpointIntegrityError(
            f"{ckpt_dir}: no {_manifest_name(0)}; refusing to load a checkpoint this run did "
            "not write"
        )
    manifests = {p: json.loads(p.read_text()) for p in sorted(ckpt_dir.glob("manifest.rank*.json"))}
    listed: dict[str, str] = {}
    steps = set()
    for path, manifest in manifests.items():
        if manifest.get("run_name") != run_name:
            raise CheckpointIntegrityError(
                f"{path}: written by run {manifest.get('run_name')!r}, not {run_name!r}"
            )
        steps.add(manifest["step"])
        for rel, sha in manifest["files"].items():
            if listed.setdefault(rel, sha) != sha:
                raise CheckpointIntegrityError(f"{ckpt_dir / rel}: manifests disagree on it")
    if len(steps) != 1:
        raise CheckpointIntegrityError(f"{ckpt_dir}: manifests of different steps {steps}")
    saved = _saved_world_size(list(manifests.values()), ckpt_dir)
    if world_size is not None and saved != world_size:
        raise WorldSizeMismatch(ckpt_dir, saved, world_size)
    for rel, sha in sorted(listed.items()):
        path = ckpt_dir / rel
        if not path.is_file():
            raise CheckpointIntegrityError(f"{path}: listed in the manifest but missing")
        if sha256_file(path) != sha:
            raise CheckpointIntegrityError(
                f"{path}: sha256 does not match the checkpoint manifest (altered or corrupt); "
                "refusing to resume from it"
            )
    for path in sorted(ckpt_dir.rglob("*")):
        rel = path.relative_to(ckpt_dir).as_posix()
        if path.is_file() and rel not in listed and not path.name.startswith("manifest.rank"):
            raise CheckpointIntegrityError(f"{path}: in the checkpoint but in no manifest")
    return steps.pop()


def load_checkpoint(
    engine, ckpt_dir: Path, rank: int, run_name: str, world_size: int | None = None
) -> TrainState:
    """Verify (the run name, every file, and the worker count: `world_size`, by default
    torch.distributed's), then restore the DeepSpeed state, this rank's RNG and the run's
    TrainState."""
    ckpt_dir = Path(ckpt_dir)
    world_size = current_world_size() if world_size is None else world_size
    verify_checkpoint(ckpt_dir, run_name, world_size)
    rng = ckpt_dir / f"rng.rank{rank}.safetensors"
    if not rng.is_file():  # every rank of the same worker count wrote one
        raise CheckpointIntegrityError(f"{rng}: missing")
    path, _ = engine.load_checkpoint(str(ckpt_dir / DS_DIR), tag=DS_TAG, load_module_strict=False)
    if path is None:
        raise CheckpointIntegrityError(f"{ckpt_dir / DS_DIR}: DeepSpeed could not load it")
    tensors = load_file(str(rng))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    states = json.loads((ckpt_dir / f"rng.rank{rank}.json").read_text())
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))
    return TrainState.from_dict(json.loads((ckpt_dir / STATE_FILE).read_text()))
