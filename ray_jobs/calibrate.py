"""Fit the fusion (correction coefficient + escalation threshold) on validation data.

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m ray_jobs.calibrate --config configs/tiny/calibrate.yaml

Scores the validation and test splits with the base and the specialist bundles (one Ray task
per bundle, in parallel, each on the GPU it reserves with `gpus_per_task`, or on CPU), with the
engine and dtype serving uses, fits `FusionSpec` on validation, writes `fusion.json` and
`calibration.json` (base-only versus fused metrics on the test split) to `output_dir`, and
records the fusion, with the engine and dtype it was fitted on, in the specialist bundle's
hazard_model.json (`hazard.infra.bundle.attach_fusion`), where serving reads and checks it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hazard.config import add_config_args, load_job_config
from hazard.config.calibrate import CalibrateConfig
from hazard.core.cascade import FusionSpec, combine, needs_specialist
from hazard.core.fusion import fit_correction, fit_escalation_threshold
from hazard.core.labels import HIGH_RISK, RISK_LABELS
from hazard.core.metrics import classification_report
from hazard.infra.bundle import BundleError, attach_fusion, read_meta
from hazard.infra.storage import absolute
from hazard.reports import write_calibration_report


def score_bundle(
    model_uri: str,
    split_dirs: list[str],
    batch_size: int,
    engine: str = "transformers",
    dtype: str = "float32",
    vllm: dict | None = None,
) -> list[tuple[list[dict], list[str]]]:
    """Per split: probabilities (label → p) and true labels of every row, scored as the
    server scores (`hazard.model.engines.make_engine`: the serving engine over the verified bundle,
    on the task's GPU when it has one). The model is loaded once for all splits."""
    from hazard.infra.storage import read_parquet
    from hazard.model.engines import make_engine

    scorer = make_engine(engine, model_uri, dtype, vllm)
    out = []
    for split_dir in split_dirs:
        table = read_parquet(split_dir, columns=["images", "answer"])
        probs = scorer.as_dicts(scorer.score_stored(table.column("images").to_pylist(), batch_size))
        out.append((probs, table.column("answer").to_pylist()))
    return out


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

    task = ray.remote(num_cpus=cfg.cpus_per_task, num_gpus=cfg.gpus_per_task)(score_bundle)
    start = time.time()
    splits = ("val", "test")
    dirs = [f"{cfg.data_dir}/{split}" for split in splits]
    roles = {"base": cfg.base_uri, "specialist": cfg.specialist_uri}
    jobs = [
        task.remote(uri, dirs, cfg.batch_size, cfg.engine, cfg.dtype, cfg.vllm.model_dump())
        for uri in roles.values()
    ]
    scored = {
        (role, split): result
        for role, results in zip(roles, ray.get(jobs), strict=True)
        for split, result in zip(splits, results, strict=True)
    }
    (pb_val, y_val), (ps_val, _) = scored["base", "val"], scored["specialist", "val"]
    correction = fit_correction(pb_val, [p[HIGH_RISK] for p in ps_val], y_val)
    theta = fit_escalation_threshold(pb_val, y_val, min_high_recall=cfg.min_high_recall)
    spec = FusionSpec(correction, theta)
    (pb_test, y_test), (ps_test, _) = scored["base", "test"], scored["specialist", "test"]
    report = {
        "fusion": spec.to_dict(),
        "scoring_engine": cfg.engine,
        "scoring_dtype": cfg.dtype,
        "val": evaluate(pb_val, ps_val, y_val, spec),
        "test": evaluate(pb_test, ps_test, y_test, spec),
        "seconds": round(time.time() - start, 1),
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fitted = dict(spec.to_dict(), fitted_on=f"{cfg.data_dir}/val")
    scoring = {"scoring_engine": cfg.engine, "scoring_dtype": cfg.dtype}
    (out / "fusion.json").write_text(json.dumps(dict(fitted, **scoring), indent=2))
    test = cascade_predictions(pb_test, ps_test, spec)
    report["plots"] = write_calibration_report(
        out, y_test, test["base"], test["fused"], test["p_high_base"], test["p_high_fused"]
    )
    (out / "calibration.json").write_text(json.dumps(report, indent=2))
    attach_fusion(cfg.specialist_uri, fitted, **scoring)
    print(
        f"[calibrate] fusion (fitted on {cfg.engine} scores in {cfg.dtype}) recorded in "
        f"{cfg.specialist_uri}"
    )
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
