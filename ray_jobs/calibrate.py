"""Fit the fusion (correction coefficient + escalation threshold) on validation data.

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m ray_jobs.calibrate --config configs/tiny/calibrate.yaml

Scores the validation and test splits with the base and the specialist bundles (Ray tasks, in
parallel), fits `FusionSpec` on validation, writes `fusion.json` and `calibration.json` (base-only
versus fused metrics on the test split) to `output_dir`, and records the fusion in the specialist
bundle's hazard_model.json (`hazard.bundle.attach_fusion`), where serving reads it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hazard.bundle import BundleError, attach_fusion, read_meta
from hazard.cascade import FusionSpec, combine, needs_specialist
from hazard.config import add_config_args, load_job_config
from hazard.fusion import fit_correction, fit_escalation_threshold
from hazard.labels import HIGH_RISK, RISK_LABELS
from hazard.metrics import classification_report
from hazard.reports import write_calibration_report
from hazard.storage import absolute


class CalibrateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: str = Field(description="Output folder of the data job.")
    base_uri: str = Field(description="Stage-1 model bundle (<output_dir>/model).")
    specialist_uri: str = Field(
        description="Stage-2 model bundle (<output_dir>/model); the fitted fusion is recorded "
        "in its hazard_model.json."
    )
    output_dir: str = Field(description="Where fusion.json and calibration.json are written.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Weights dtype to score in; serve in the same one (recorded in the "
        "specialist bundle as scoring_dtype).",
    )
    min_high_recall: float = Field(
        1.0, ge=0, le=1, description="Share of validation high-risk cases that must escalate."
    )
    batch_size: int = Field(16, ge=1, description="Images per scoring forward pass.")
    cpus_per_task: float = Field(1, gt=0, description="CPUs per scoring task.")


def score_bundle(
    model_uri: str, split_dir: str, batch_size: int, dtype: str = "float32"
) -> tuple[list[dict], list[str]]:
    """Probabilities (label → p) and true labels for every row of one split, scored as the
    server scores: the verified bundle's weights, processor, prompt and labels."""
    from hazard.bundle import open_bundle
    from hazard.vlm import load_model, load_processor, score_split

    bundle = open_bundle(model_uri)
    meta = bundle.meta
    model = load_model(bundle.path, dtype).eval()
    processor = load_processor(bundle.path, meta.max_pixels, meta.min_pixels)
    labels = tuple(meta.labels)
    probs, truth = score_split(model, processor, split_dir, meta.prompt, labels, batch_size)
    return [dict(zip(labels, row, strict=True)) for row in probs], truth


def cascade_predictions(p_base: list[dict], p_spec: list[dict], spec: FusionSpec) -> dict:
    """Per sample: base and fused labels, base and fused p(high_risk), escalated or not."""
    out: dict[str, list] = {k: [] for k in ("base", "fused", "p_high_base", "p_high_fused", "esc")}
    for pb, ps in zip(p_base, p_spec, strict=True):
        esc = needs_specialist(pb, spec)
        result = combine(pb, ps[HIGH_RISK] if esc else None, spec)
        out["base"].append(max(RISK_LABELS, key=pb.__getitem__))
        out["fused"].append(result.risk_level)
        out["p_high_base"].append(pb[HIGH_RISK])
        out["p_high_fused"].append(result.probabilities[HIGH_RISK])
        out["esc"].append(esc)
    return out


def evaluate(p_base: list[dict], p_spec: list[dict], truth: list[str], spec: FusionSpec) -> dict:
    """Base-only and cascade metrics on one split."""
    pred = cascade_predictions(p_base, p_spec, spec)
    return {
        "base": classification_report(truth, pred["base"]),
        "fused": classification_report(truth, pred["fused"]),
        "escalation_rate": sum(pred["esc"]) / max(len(truth), 1),
    }


def run(cfg: CalibrateConfig) -> dict:
    """Score val/test with both bundles, fit the fusion on val, report base vs fused on test,
    record the fusion in the specialist bundle."""
    import ray

    # relative paths are the job directory's: resolve them before tasks run elsewhere
    cfg = cfg.model_copy(
        update={k: absolute(getattr(cfg, k)) for k in ("data_dir", "base_uri", "specialist_uri")}
    )
    if read_meta(cfg.specialist_uri).stage != "specialist":  # fail before any scoring
        raise BundleError(f"specialist_uri {cfg.specialist_uri} is not a specialist bundle")

    task = ray.remote(num_cpus=cfg.cpus_per_task)(score_bundle)
    start = time.time()
    jobs = {
        (role, split): task.remote(uri, f"{cfg.data_dir}/{split}", cfg.batch_size, cfg.dtype)
        for role, uri in (("base", cfg.base_uri), ("specialist", cfg.specialist_uri))
        for split in ("val", "test")
    }
    scored = dict(zip(jobs, ray.get(list(jobs.values())), strict=True))
    (pb_val, y_val), (ps_val, _) = scored["base", "val"], scored["specialist", "val"]
    correction = fit_correction(pb_val, [p[HIGH_RISK] for p in ps_val], y_val)
    theta = fit_escalation_threshold(pb_val, y_val, min_high_recall=cfg.min_high_recall)
    spec = FusionSpec(correction, theta)
    (pb_test, y_test), (ps_test, _) = scored["base", "test"], scored["specialist", "test"]
    report = {
        "fusion": spec.to_dict(),
        "scoring_dtype": cfg.dtype,
        "val": evaluate(pb_val, ps_val, y_val, spec),
        "test": evaluate(pb_test, ps_test, y_test, spec),
        "seconds": round(time.time() - start, 1),
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fitted = dict(spec.to_dict(), fitted_on=f"{cfg.data_dir}/val")
    (out / "fusion.json").write_text(json.dumps(fitted, indent=2))
    test = cascade_predictions(pb_test, ps_test, spec)
    report["plots"] = write_calibration_report(
        out, y_test, test["base"], test["fused"], test["p_high_base"], test["p_high_fused"]
    )
    (out / "calibration.json").write_text(json.dumps(report, indent=2))
    attach_fusion(cfg.specialist_uri, fitted, scoring_dtype=cfg.dtype)
    print(f"[calibrate] fusion recorded in {cfg.specialist_uri}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fit the cascade's fusion on validation data.")
    add_config_args(parser, "min_high_recall=0.9")
    cfg = load_job_config(parser.parse_args(argv), CalibrateConfig)
    if cfg is None:
        return 2
    import ray

    ray.init()
    report = run(cfg)
    fused, base = report["test"]["fused"], report["test"]["base"]
    print(f"[calibrate] fusion {json.dumps(report['fusion'])}")
    print(
        f"[calibrate] test macro-F1 base {base['macro_f1']:.3f} -> fused {fused['macro_f1']:.3f}; "
        f"high-risk recall base {base['high_risk_recall']} -> fused {fused['high_risk_recall']}; "
        f"escalation rate {report['test']['escalation_rate']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
