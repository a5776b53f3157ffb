"""Training inputs prepared ahead of the step: a bounded background loader.

`Prefetcher(items, prepare, depth)` runs `prepare` (decode, processor, collate: see
`hazard.training.step.prepare_micro_batch`) over `items` in one background thread, at most
`depth` results ahead of the consumer, and yields them in the order of `items`, so a run that
resumes by skipping the first N items of a pass sees the same micro-batches. An exception in
the thread is raised by the consumer's next `next()`; `close()` stops the thread. `depth=0`
prepares each item on the consumer's thread when asked (no thread). The consumer's waiting
time (`wait_seconds`) and the time spent preparing (`prepare_seconds`) are counted
(`take_times`), so a run can report the share of its step time spent waiting for inputs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_END = object()


class Prefetcher:
    """Iterate `prepare(item)` for each item of `items`, prepared up to `depth` ahead."""

    def __init__(self, items: Iterable, prepare: Callable[[Any], Any], depth: int):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self._items: Iterator = iter(items)
        self._prepare = prepare
        self.depth = depth
        self.wait_seconds = 0.0  # consumer blocked in next()
        self.prepare_seconds = 0.0  # time in `prepare`, whichever thread ran it
        self._lock = threading.Lock()
        self._done = False
        self._stop = threading.Event()
        self._thread = None
        if depth:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._produce, name="ingest", daemon=True)
            self._thread.start()

    def _timed(self, item):
        t = time.perf_counter()
        out = self._prepare(item)
        with self._lock:
            self.prepare_seconds += time.perf_counter() - t
        return out

    def _put(self, message) -> bool:
        """Queue `message` unless closed meanwhile (False)."""
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set() or not self._put((self._timed(item), None)):
                    return
            self._put((_END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((None, exc))

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        t = time.perf_counter()
        try:
            if self._thread is None:
                try:
                    item = next(self._items)
                except StopIteration:
                    self._done = True
                    raise
                return self._timed(item)
            out, error = self._queue.get()
        finally:
            with self._lock:
                self.wait_seconds += time.perf_counter() - t
        if error is not None:
            self._done = True
            self._stop.set()
            raise error
        if out is _END:
            self._done = True
            raise StopIteration
        return out

    def take_times(self) -> tuple[float, float]:
        """(wait_seconds, prepare_seconds) since the last call, and start counting afresh."""
        with self._lock:
            out = (self.wait_seconds, self.prepare_seconds)
            self.wait_seconds = self.prepare_seconds = 0.0
        return out

    def close(self, timeout: float = 30.0) -> None:
        """Stop the loader thread (it finishes the item it is preparing) and drop what it
        prepared."""
        self._done = True
        self._stop.set()
        if self._thread is not None:
            while True:  # unblock a put in progress
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(timeout)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
