"""Shared pieces of the training tests: a small prepared data set and a stage config."""

from __future__ import annotations

from pathlib import Path

from hazard.config import load_config
from hazard.config.data import DataConfig
from hazard.config.train import TrainConfig
from hazard.demo.synthetic import write_folder_dataset

REPO = Path(__file__).resolve().parents[2]
STAGE1 = "configs/tiny/stage1_base.yaml"
ADAPTER = "adapter/adapter_model.safetensors"


def prepare_small(root: Path) -> Path:
    """6 synthetic images per label through the data job into root/data (5 val rows)."""
    from pipelines.prepare import prepare

    write_folder_dataset(root / "raw", n_per_label=6, seed=1, corrupt=0)
    cfg = load_config(
        REPO / "configs/tiny/data.yaml",
        DataConfig,
        [f"source.uri={root / 'raw'}", f"output_dir={root / 'data'}", "augment.copies=1"],
    )
    prepare(cfg)
    return root / "data"


def stage_config(
    data_dir, output_dir, steps: int, overrides=(), stage_file: str = STAGE1
) -> TrainConfig:
    """A tiny stage config: batch 4, `steps` optimizer steps, logging every 2."""
    return load_config(
        REPO / stage_file,
        TrainConfig,
        [
            f"data_dir={data_dir}",
            f"output_dir={output_dir}",
            f"optim.max_steps={steps}",
            "optim.batch_size=4",
            "optim.log_every=2",
            *overrides,
        ],
    )


def kept_checkpoints(run_dir) -> dict[int, Path]:
    """The step checkpoints Ray Train kept in a local run folder, by step."""
    return {int(p.name.split("_")[1]): p for p in Path(run_dir).glob("step_*")}


def score_split(model, processor, split_dir: str, prompt: str, labels, batch_size: int):
    """Label probabilities and true answers of every row of a local Parquet split, scored with
    `hazard.model.vlm.label_probabilities` (a second path beside training's validation)."""
    from hazard.infra.storage import read_parquet
    from hazard.model.vlm import label_probabilities, open_stored_image

    table = read_parquet(split_dir, None, columns=["images", "answer"])
    probs, truth = [], []
    for i in range(0, table.num_rows, batch_size):
        part = table.slice(i, batch_size).to_pydict()
        images = [[open_stored_image(b) for b in imgs] for imgs in part["images"]]
        probs.extend(label_probabilities(model, processor, images, prompt, labels).tolist())
        truth.extend(part["answer"])
    return probs, truth
