"""Training inputs prepared ahead of the step, in a loader process.

`Ingest(prepare, depth)` starts one child process (spawned, so it shares no lock or thread
with the trainer) that runs `prepare` (decode, processor, collate: see
`hazard.model.training.step.prepare_micro_batch`) on the items it is sent. `ingest.iterate(items)`
keeps `depth` items in flight and yields their results in the order of `items`, so a run that
resumes by skipping the first N items of a pass sees the same micro-batches. The process lives
for the whole run (one start, not one per epoch). An exception in `prepare` is raised by the
consumer's `next()`, and a loader process that dies is reported with its exit code. `depth=0`
prepares each item on the caller's thread when asked (no process).

A process rather than a thread: measured on 2 CPUs, a loader thread made steps ~2.4x slower,
its Python work and the step's many small torch calls contending for one GIL
(`docs/benchmarks.md`, `train_throughput`).

The consumer's waiting time and the time spent preparing are counted (`take_times`), so a run
can report the share of its step time spent waiting for inputs.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_STOP = "__ingest_stop__"


def _serve(prepare: Callable[[Any], Any], inbox, outbox) -> None:
    """The loader process: prepare each item sent until told to stop, or until the trainer is
    gone (a killed worker's loader must not outlive it)."""
    parent = mp.parent_process()
    while True:
        try:
            item = inbox.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return
            continue
        if isinstance(item, str) and item == _STOP:
            return
        t = time.perf_counter()
        try:
            out, error = prepare(item), None
        except BaseException as exc:  # handed to the consumer, raised there
            out, error = None, exc
        seconds = time.perf_counter() - t
        try:
            outbox.put((out, seconds, error))
        except Exception as exc:  # e.g. an exception that does not pickle
            outbox.put((None, seconds, RuntimeError(f"{type(error).__name__}: {error} ({exc})")))


class IngestDied(RuntimeError):
    """The loader process ended while items were in flight."""


class Ingest:
    """Run `prepare` over items `depth` ahead in a loader process (0: on the caller's thread)."""

    def __init__(self, prepare: Callable[[Any], Any], depth: int):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self._prepare, self.depth = prepare, depth
        self._wait = self._prepared = 0.0
        self._inflight = 0
        self._proc = None
        if depth:
            ctx = mp.get_context("spawn")
            self._inbox, self._outbox = ctx.Queue(), ctx.Queue()
            self._proc = ctx.Process(
                target=_serve, args=(prepare, self._inbox, self._outbox), daemon=True
            )
            self._proc.start()

    def _receive(self):
        """The next result of the loader process (its prepare seconds counted)."""
        while True:
            try:
                out, seconds, error = self._outbox.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._proc.is_alive():
                    raise IngestDied(
                        f"the training-input loader process exited ({self._proc.exitcode}) "
                        f"with {self._inflight} micro-batch(es) in flight"
                    ) from None
        self._inflight -= 1
        self._prepared += seconds
        return out, error

    def iterate(self, items: Iterable) -> Iterator:
        """`prepare(item)` for each item, in order, `depth` ahead. Results still in flight from
        an earlier, abandoned iteration are dropped first."""
        while self._inflight:
            self._receive()
        source = iter(items)
        if self._proc is None:
            for item in source:
                t = time.perf_counter()
                out = self._prepare(item)
                seconds = time.perf_counter() - t
                self._wait += seconds
                self._prepared += seconds
                yield out
            return
        exhausted = False
        while True:
            while not exhausted and self._inflight < self.depth:
                try:
                    self._inbox.put(next(source))
                    self._inflight += 1
                except StopIteration:
                    exhausted = True
            if not self._inflight:
                return
            t = time.perf_counter()
            out, error = self._receive()
            self._wait += time.perf_counter() - t
            if error is not None:
                raise error
            yield out

    def take_times(self) -> tuple[float, float]:
        """(seconds the consumer waited, seconds spent preparing) since the last call."""
        out = (self._wait, self._prepared)
        self._wait = self._prepared = 0.0
        return out

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loader process (killed if it does not stop within `timeout`)."""
        if self._proc is None:
            return
        if self._proc.is_alive():
            self._inbox.put(_STOP)
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._inbox.close()
        self._outbox.close()
        self._proc = None

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
