"""hazard.model.training.ingest: the loader process keeps order across epochs, drops an abandoned
epoch's results, hands errors to the consumer, reports its own death; and the micro-batches it
prepares with the real tiny processor equal those prepared on the step's thread."""

from __future__ import annotations

import io
import itertools
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hazard.core.tasks import CORRIDOR_RISK_PROMPT
from hazard.model.training.ingest import Ingest, IngestDied
from hazard.model.training.step import collate_inputs, encode_batch, prepare_micro_batch


def _square_slowly(x):
    time.sleep(0.002 * (x % 3))  # uneven work must not reorder
    return x * x, os.getpid()


def _fail_on_three(x):
    if x == 3:
        raise ValueError("bad sample 3")
    return x


def _exit_on_two(x):
    if x == 2:
        os._exit(7)  # the loader process dies, as when the kernel kills it
    return x


def _sleep(x):
    time.sleep(0.05)
    return x


def test_items_come_in_order_prepared_in_one_other_process():
    with Ingest(_square_slowly, depth=3) as ingest:
        out = list(ingest.iterate(range(20)))
        again = list(ingest.iterate(range(5)))  # the next epoch: the same process
    assert [x for x, _ in out] == [x * x for x in range(20)]
    pids = {pid for _, pid in out + again}
    assert len(pids) == 1 and os.getpid() not in pids


def test_depth_zero_prepares_on_the_callers_thread_when_asked():
    calls = []
    ingest = Ingest(lambda x: calls.append(x) or x, depth=0)
    batches = ingest.iterate(range(3))
    assert calls == []  # nothing before the first next()
    assert next(batches) == 0 and calls == [0]
    assert list(batches) == [1, 2]


def test_an_abandoned_epoch_does_not_leak_into_the_next():
    with Ingest(_square_slowly, depth=3) as ingest:
        for x, _ in ingest.iterate(itertools.count()):
            if x == 4:  # early stop with 3 items in flight
                break
        assert [x for x, _ in ingest.iterate([5, 6])] == [25, 36]


def test_an_error_in_prepare_reaches_the_consumer_after_the_items_before_it():
    got = []
    with Ingest(_fail_on_three, depth=2) as ingest:
        with pytest.raises(ValueError, match="bad sample 3"):
            for x in ingest.iterate(range(10)):
                got.append(x)
        assert got == [0, 1, 2]
        assert list(ingest.iterate([7, 8])) == [7, 8]  # the process still serves


def test_an_error_in_the_source_reaches_the_consumer():
    def source():
        yield 1
        raise OSError("shard lost")

    with Ingest(_sleep, depth=1) as ingest, pytest.raises(OSError, match="shard lost"):
        list(ingest.iterate(source()))


def test_a_dead_loader_process_is_reported_not_waited_for():
    with Ingest(_exit_on_two, depth=2) as ingest, pytest.raises(IngestDied, match=r"exited \(7\)"):
        list(ingest.iterate(range(5)))


def test_take_times_counts_waiting_and_preparing_and_resets():
    ingest = Ingest(_sleep, depth=0)
    list(ingest.iterate(range(3)))
    wait, prep = ingest.take_times()
    assert prep == pytest.approx(0.15, abs=0.05)
    assert wait == pytest.approx(prep)  # on the caller's thread the wait is the preparing
    assert ingest.take_times() == (0.0, 0.0)
    with Ingest(_sleep, depth=2) as ahead:
        list(ahead.iterate(range(3)))
        wait, prep = ahead.take_times()
    assert prep == pytest.approx(0.15, abs=0.05)  # measured in the loader process


def _png(rgb, size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, "PNG")
    return buf.getvalue()


def test_prefetched_micro_batches_equal_the_step_threads(tiny):
    import functools

    _, processor = tiny
    rng = np.random.default_rng(0)
    answers = ["high_risk", "no_risk", "low_risk", "medium_risk"]
    batches = [
        {
            "id": np.array([f"s{b}-{i}" for i in range(4)]),
            "images": [[_png(tuple(rng.integers(0, 255, 3).tolist()), (112, 84))] for _ in "abcd"],
            "answer": np.array(answers),
        }
        for b in range(3)
    ]
    weights = {"high_risk": 3.0}
    prep = functools.partial(
        prepare_micro_batch,
        prompt=CORRIDOR_RISK_PROMPT,
        max_length=512,
        class_weights=weights,
    )
    inline = list(Ingest(functools.partial(prep, processor), depth=0).iterate(batches))
    with Ingest(functools.partial(prep, processor), depth=2) as ingest:
        ahead = list(ingest.iterate(batches))
    for a, b, batch in zip(inline, ahead, batches, strict=True):
        encoded, ans, skipped = encode_batch(processor, batch, CORRIDOR_RISK_PROMPT, 512)
        expected = collate_inputs(processor, encoded, ans, weights)
        assert b.samples == 4 and b.skipped == [] == skipped
        assert b.tokens == sum(len(e.input_ids) for e in encoded)
        assert expected["sample_weights"].tolist() == [3.0, 1.0, 1.0, 1.0]
        for key, value in expected.items():
            assert torch.equal(a.inputs[key], value), key
            assert torch.equal(b.inputs[key], value), key


def _start_ingest_and_report(path):
    """Child of the test: start a loader, write its pid, then die without closing it."""
    ingest = Ingest(_sleep, depth=1)
    assert list(ingest.iterate([1])) == [1]
    Path(path).write_text(str(ingest._proc.pid))
    os._exit(0)  # as a killed worker: no clean-up


def test_the_loader_process_ends_when_its_trainer_dies(tmp_path):
    import multiprocessing as mp

    import psutil

    proc = mp.get_context("spawn").Process(
        target=_start_ingest_and_report, args=(str(tmp_path / "pid"),)
    )
    proc.start()
    proc.join(60)
    loader = psutil.Process(int((tmp_path / "pid").read_text()))
    loader.wait(timeout=10)  # psutil.TimeoutExpired if the orphan kept running
