"""hazard.training.ingest: the background loader keeps order, runs ahead within its bound,
hands errors to the consumer, stops on close; and the micro-batches it prepares with the real
tiny processor equal those prepared on the step's thread."""

from __future__ import annotations

import io
import itertools
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from hazard.tasks import CORRIDOR_RISK_PROMPT
from hazard.training.ingest import Prefetcher
from hazard.training.step import collate_inputs, encode_batch, prepare_micro_batch


def test_items_come_in_order_prepared_on_the_loader_thread():
    threads = []

    def prepare(x):
        threads.append(threading.current_thread().name)
        time.sleep(0.001 * (x % 3))  # uneven work must not reorder
        return x * x

    with Prefetcher(range(20), prepare, depth=3) as loader:
        assert list(loader) == [x * x for x in range(20)]
    assert set(threads) == {"ingest"}


def test_depth_zero_prepares_on_the_callers_thread_when_asked():
    calls = []
    loader = Prefetcher(range(3), lambda x: calls.append(x) or x, depth=0)
    assert calls == []  # nothing before the first next()
    assert next(loader) == 0 and calls == [0]
    assert list(loader) == [1, 2]


def test_the_loader_runs_ahead_but_no_more_than_its_depth():
    prepared = []
    loader = Prefetcher(itertools.count(), lambda x: prepared.append(x) or x, depth=2)
    assert next(loader) == 0
    time.sleep(0.5)  # the consumer is busy with its step: the loader fills the queue
    # 2 queued, plus one prepared and waiting for room
    assert len(prepared) == 1 + 2 + 1
    loader.close()
    assert not loader._thread.is_alive()


def test_an_error_in_prepare_reaches_the_consumer_after_the_items_before_it():
    def prepare(x):
        if x == 3:
            raise ValueError("bad sample 3")
        return x

    loader = Prefetcher(range(10), prepare, depth=2)
    got = []
    with pytest.raises(ValueError, match="bad sample 3"):
        for x in loader:
            got.append(x)
    assert got == [0, 1, 2]
    with pytest.raises(StopIteration):  # finished, not hanging
        next(loader)


def test_an_error_in_the_source_reaches_the_consumer():
    def source():
        yield 1
        raise OSError("shard lost")

    with pytest.raises(OSError, match="shard lost"), Prefetcher(source(), str, depth=1) as loader:
        list(loader)


def test_take_times_counts_waiting_and_preparing_and_resets():
    loader = Prefetcher(range(3), lambda x: time.sleep(0.05) or x, depth=0)
    list(loader)
    wait, prep = loader.take_times()
    assert prep == pytest.approx(0.15, abs=0.05)
    assert wait >= prep  # on the caller's thread the wait is the preparing
    assert loader.take_times() == (0.0, 0.0)


def _png(rgb, size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, "PNG")
    return buf.getvalue()


def test_prefetched_micro_batches_equal_the_step_threads(tiny):
    import copy
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
    inline = list(Prefetcher(batches, functools.partial(prep, processor), depth=0))
    ahead = list(Prefetcher(batches, functools.partial(prep, copy.deepcopy(processor)), depth=2))
    for a, b, batch in zip(inline, ahead, batches, strict=True):
        encoded, ans, skipped = encode_batch(processor, batch, CORRIDOR_RISK_PROMPT, 512)
        expected = collate_inputs(processor, encoded, ans, weights)
        assert b.samples == 4 and b.skipped == [] == skipped
        assert b.tokens == sum(len(e.input_ids) for e in encoded)
        assert expected["sample_weights"].tolist() == [3.0, 1.0, 1.0, 1.0]
        for key, value in expected.items():
            assert torch.equal(a.inputs[key], value), key
            assert torch.equal(b.inputs[key], value), key
