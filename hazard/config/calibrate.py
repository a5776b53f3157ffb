"""Config of the calibration job (`ray_jobs/calibrate.py`, `configs/*/calibrate.yaml`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hazard.config.serve import VLLMOptions
from hazard.core.strict import StrictModel


class CalibrateConfig(StrictModel):
    """Fit the fusion of a base/specialist pair on the data job's val split."""

    data_dir: str = Field(description="Output folder of the data job.")
    base_uri: str = Field(description="Stage-1 model bundle (<output_dir>/model).")
    specialist_uri: str = Field(
        description="Stage-2 model bundle (<output_dir>/model); the fitted fusion is recorded "
        "in its hazard_model.json."
    )
    output_dir: str = Field(description="Where fusion.json and calibration.json are written.")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="Engine that scores val/test: the one serving uses, since the fusion is "
        "fitted on its probabilities (recorded in the specialist bundle as scoring_engine; "
        "serving refuses a fusion fitted on another engine's scores). vllm needs a GPU.",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Weights dtype to score in; serve in the same one (recorded in the "
        "specialist bundle as scoring_dtype). bfloat16 for the 7B/3B on GPU; kept on CPU.",
    )
    min_high_recall: float = Field(
        1.0, ge=0, le=1, description="Share of validation high-risk cases that must escalate."
    )
    batch_size: int = Field(16, ge=1, description="Images per scoring forward pass.")
    cpus_per_task: float = Field(
        1, gt=0, description="CPUs per scoring task (one task per bundle, scoring val and test)."
    )
    gpus_per_task: float = Field(
        0,
        ge=0,
        description="GPUs per scoring task (the two tasks run at once: 2 GPUs for 1). 0: the "
        "tasks score on CPU, with a log line (hours for the 7B).",
    )
    vllm: VLLMOptions = Field(
        default_factory=VLLMOptions, description="vLLM settings (engine: vllm), as serving's."
    )

    @model_validator(mode="after")
    def _vllm_needs_a_gpu(self) -> CalibrateConfig:
        if self.engine == "vllm" and self.gpus_per_task < 1:
            raise ValueError(
                f"engine vllm needs a whole GPU per scoring task; gpus_per_task is "
                f"{self.gpus_per_task}"
            )
        return self
