"""bench_serve_load's summary figures from whatever phases were measured before a failure."""

from __future__ import annotations

from bench.bench_serve_load import derived


def _rows(*rates: float) -> list[dict]:
    return [
        {"concurrency": c, "req_per_s": r} for c, r in zip((1, 8, 32, 128), rates, strict=False)
    ]


def _result(app=(), naive=(), eos=(), floor=None) -> dict:
    return {
        "app": {"config": None, "levels": _rows(*app)},
        "naive": {"min_new_tokens": 150, "levels": _rows(*naive)},
        "naive_eos": {"min_new_tokens": 0, "levels": _rows(*eos)},
        "floor": floor,
    }


def test_every_figure_when_every_phase_ran():
    out = derived(
        _result((10, 40, 30, 32), (4, 2, 0, 0), (50, 20, 20, 25), {"best_ms_per_image": 5})
    )
    assert out["peak_req_per_s"] == {"app": 40, "naive": 4, "naive_eos": 50}
    assert out["overload_retention"] == 32 / 40
    assert out["floor_ratio"] == (1000 / 40) / 5
    assert out["speedup"] == 10.0 and out["speedup_vs_eos"] == 40 / 50


def test_a_naive_phase_that_failed_leaves_out_only_its_figures():
    out = derived(_result((10, 40), floor={"best_ms_per_image": 5}))  # died after two app levels
    assert out["peak_req_per_s"] == {"app": 40}
    assert out["overload_retention"] == 1.0 and out["floor_ratio"] == 5.0
    assert "speedup" not in out and "speedup_vs_eos" not in out


def test_nothing_measured_yet_gives_no_figures():
    assert derived(_result()) == {"peak_req_per_s": {}}
