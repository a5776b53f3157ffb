"""bench.bench_train_throughput: the steady-state window and rates, against figures worked out
by hand from made-up step histories (no training runs here)."""

from __future__ import annotations

import pytest

from bench.bench_train_throughput import steady_rates, steady_state, summarize_path

# a run's history: set-up ends at 10 s with step 1, then steps of 2, 1, 2 and 3 s
HISTORY = [
    {"step": 1, "seconds": 10.0},
    {"step": 2, "seconds": 12.0},
    {"step": 3, "seconds": 13.0},
    {"step": 4, "seconds": 15.0},
    {"step": 5, "seconds": 18.0},
]


def test_steady_state_starts_at_the_end_of_the_skipped_steps():
    window, seconds = steady_state(HISTORY, skip=2)
    assert [s["step"] for s in window] == [3, 4, 5]
    assert seconds == pytest.approx(18.0 - 12.0)  # not 18 - 10 (step 2) nor 18 - 0 (set-up)


def test_steady_state_reads_steps_in_any_order():
    window, seconds = steady_state(list(reversed(HISTORY)), skip=1)
    assert [s["step"] for s in window] == [2, 3, 4, 5]
    assert seconds == pytest.approx(8.0)


def test_steady_rates_with_a_fixed_batch():
    r = steady_rates(HISTORY, skip=2, samples_per_step=8)
    assert r["steps"] == 3 and r["samples"] == 24
    assert r["samples_per_s"] == pytest.approx(24 / 6)
    assert r["step_ms"] == pytest.approx(2000.0)
    assert "tokens_per_s" not in r


def test_steady_rates_sum_only_the_window_of_counted_samples_and_tokens():
    steps = [
        {**s, "samples": n, "tokens": 97 * n}
        for s, n in zip(HISTORY, [100, 100, 8, 6, 8], strict=True)
    ]
    r = steady_rates(steps, skip=2)
    assert r["samples"] == 22  # steps 3-5 only; the skipped steps' 200 are not counted
    assert r["samples_per_s"] == pytest.approx(22 / 6)
    assert r["tokens_per_s"] == pytest.approx(97 * 22 / 6)


@pytest.mark.parametrize("skip", [0, 5, 9])
def test_steady_state_refuses_a_window_it_cannot_measure(skip):
    with pytest.raises(ValueError):  # no step `skip` to start from, or nothing after it
        steady_state(HISTORY, skip=skip)


def test_summarize_path_sums_plain_workers_and_derives_ray_tokens():
    worker = [{**s, "samples": 8, "tokens": 800} for s in HISTORY]
    faster = [{**s, "seconds": s["seconds"] / 2} for s in worker]
    plain = summarize_path(
        [{"wall_seconds": 20.0, "workers": [{"steps": worker}, {"steps": faster}]}],
        skip=2,
        samples_per_step=16,
        mean_tokens=50.0,
    )
    # 24 samples in 6 s plus 24 in 3 s; tokens as counted, not from the mean
    assert plain["samples_per_s"] == pytest.approx(4.0 + 8.0)
    assert plain["tokens_per_s"] == pytest.approx(400.0 + 800.0)
    assert plain["setup_seconds"] == pytest.approx(10.0)  # the slower worker's step 1

    ray = summarize_path(
        [
            {"wall_seconds": 60.0, "steps": HISTORY},
            {"wall_seconds": 70.0, "steps": [{**s, "seconds": s["seconds"] * 2} for s in HISTORY]},
            {"wall_seconds": 80.0, "steps": [{**s, "seconds": s["seconds"] * 4} for s in HISTORY]},
        ],
        skip=2,
        samples_per_step=16,
        mean_tokens=50.0,
    )
    assert ray["samples_per_s_each"] == pytest.approx([48 / 6, 48 / 12, 48 / 24])
    assert ray["samples_per_s"] == pytest.approx(48 / 12)  # the median repeat
    assert ray["tokens_per_s"] == pytest.approx(50.0 * 48 / 12)
    assert ray["wall_seconds"] == pytest.approx(70.0)


def test_input_shares_are_the_window_waiting_and_preparing_over_its_seconds():
    # steps 3-5 take 6 s; they waited 0.5 + 1.0 + 0.1 s and prepared 1 + 2 + 0.6 s
    timed = [
        {**s, "input_wait_s": w, "prepare_s": p}
        for s, w, p in zip(HISTORY, [9, 9, 0.5, 1.0, 0.1], [9, 9, 1, 2, 0.6], strict=True)
    ]
    r = steady_rates(timed, skip=2, samples_per_step=8)
    assert r["input_share"] == pytest.approx(1.6 / 6)
    assert r["prepare_share"] == pytest.approx(3.6 / 6)
    # plain workers: their shares averaged; ray: its one history's
    slower = [{**s, "input_wait_s": 0.0, "samples": 8, "tokens": 1} for s in timed]
    faster = [{**s, "samples": 8, "tokens": 1} for s in timed]
    plain = summarize_path(
        [{"wall_seconds": 1.0, "workers": [{"steps": slower}, {"steps": faster}]}],
        skip=2,
        samples_per_step=16,
        mean_tokens=1.0,
    )
    assert plain["input_share"] == pytest.approx((0.0 + 1.6 / 6) / 2)
    assert plain["prepare_share"] == pytest.approx(3.6 / 6)
    ray = summarize_path(
        [{"wall_seconds": 1.0, "steps": timed}], skip=2, samples_per_step=8, mean_tokens=1.0
    )
    assert ray["input_share"] == pytest.approx(1.6 / 6)
    untimed = summarize_path(
        [{"wall_seconds": 1.0, "steps": HISTORY}], skip=2, samples_per_step=8, mean_tokens=1.0
    )
    assert "input_share" not in untimed  # histories from before the loader have no shares
