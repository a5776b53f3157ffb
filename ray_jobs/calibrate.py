"""Fit the fusion (correction coefficient + escalation threshold) on validation data.

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m ray_jobs.calibrate --config configs/tiny/calibrate.yaml

Scores the validation and test splits with the base and the specialist bundles (Ray tasks, in
parallel), fits `FusionSpec` on validation, writes `fusion.json` and `calibration.json` (base-only
versus fused metrics on the test split) to `output_dir`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hazard.cascade import FusionSpec, combine, needs_specialist
from hazard.config import add_config_args, load_job_config
from hazard.fusion import fit_correction, fit_escalation_threshold
from hazard.labels import HIGH_RISK, RISK_LABELS
from hazard.metrics import classification_report
from hazard.storage import absolute


class CalibrateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: str = Field(description="Output folder of the data job.")
    base_uri: str = Field(description="Stage-1 model bundle (<output_dir>/model).")
    specialist_uri: str = Field(description="Stage-2 model bundle (<output_dir>/model).")
    output_dir: str = Field(description="Where fusion.json and calibration.json are written.")
    min_high_recall: float = Field(
        1.0, ge=0, le=1, description="Share of validation high-risk cases that must escalate."
    )
    batch_size: int = Field(16, ge=1, description="Images per scoring forward pass.")
    cpus_per_task: float = Field(1, gt=0, description="CPUs per scoring task.")


def score_bundle(model_uri: str, split_dir: str, batch_size: int) -> tuple[list[dict], list[str]]:
    """Probabilities (label → p) and true labels for every row of one split."""
    from hazard.bundle import read_bundle
    from hazard.vlm import load_model, load_processor, score_split

    meta = read_bundle(model_uri)
    model, processor = load_model(model_uri).eval(), load_processor(model_uri)
    labels = tuple(meta["labels"])
    probs, truth = score_split(model, processor, split_dir, meta["prompt"], labels, batch_size)
    return [dict(zip(labels, row, strict=True)) for row in probs], truth


def evaluate(p_base: list[dict], p_spec: list[dict], truth: list[str], spec: FusionSpec) -> dict:
    """Base-only and cascade metrics on one split."""
    base_pred = [max(RISK_LABELS, key=p.__getitem__) for p in p_base]
    fused, escalated = [], 0
    for pb, ps in zip(p_base, p_spec, strict=True):
        esc = needs_specialist(pb, spec)
        escalated += esc
        fused.append(combine(pb, ps[HIGH_RISK] if esc else None, spec).risk_level)
    return {
        "base": classification_report(truth, base_pred),
        "fused": classification_report(truth, fused),
        "escalation_rate": escalated / max(len(truth), 1),
    }


def run(cfg: CalibrateConfig) -> dict:
    """Score val/test with both bundles, fit the fusion on val, report base vs fused on test."""
    import ray

    # relative paths are the job directory's: resolve them before tasks run elsewhere
    cfg = cfg.model_copy(
        update={k: absolute(getattr(cfg, k)) for k in ("data_dir", "base_uri", "specialist_uri")}
    )

    task = ray.remote(num_cpus=cfg.cpus_per_task)(score_bundle)
    start = time.time()
    jobs = {
        (role, split): task.remote(uri, f"{cfg.data_dir}/{split}", cfg.batch_size)
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
        "val": evaluate(pb_val, ps_val, y_val, spec),
        "test": evaluate(pb_test, ps_test, y_test, spec),
        "seconds": round(time.time() - start, 1),
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fitted = dict(spec.to_dict(), fitted_on=f"{cfg.data_dir}/val")
    (out / "fusion.json").write_text(json.dumps(fitted, indent=2))
    (out / "calibration.json").write_text(json.dumps(report, indent=2))
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
