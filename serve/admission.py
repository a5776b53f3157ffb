"""Admission at the ingress: a bounded, deadline-aware FIFO of images waiting for the models.

`capacity` images may be at the models at once (the models' batch capacity: batch size x
batches in flight x base replicas running, shared between the ingress replicas). Beyond that,
requests wait in order, as many images as the measured scoring rate can clear within
`max_wait_s` (at least one capacity's worth, at most `max_queue_images`). A request that finds
the queue full is refused at once; one still waiting at its deadline is refused then. Both are
`Overloaded`, which the app answers 503 + Retry-After. A batch request counts as its number of
images and is admitted whole (capped at `capacity`, so a large batch can still run).

Retry-After grows with the overload: `base x (1 + refused / completed)`, both measured images per
second, capped. With N clients turned away and retrying after R, the refusals cost N / R requests
per second; scaling R with the refused share keeps that traffic growing as sqrt(N) instead of N,
so the cores that answer refusals stay with the models (what keeps throughput near the peak).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


class Overloaded(Exception):
    """Refused admission; `reason` is `queue_full` or `deadline`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class _Waiter:
    images: int
    future: asyncio.Future = field(repr=False)


class Admission:
    """FIFO admission of images to the models (one per ingress replica, on its event loop)."""

    def __init__(
        self,
        capacity: int,
        max_wait_s: float,
        max_queue_images: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        rate_halflife_s: float = 5.0,
    ):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.max_wait_s, self.max_queue_images = max_wait_s, max_queue_images
        self.in_flight = 0
        self.waiting_images = 0
        self._queue: deque[_Waiter] = deque()
        self._completed = _Rate(clock, rate_halflife_s)  # images through the models
        self._refused = _Rate(clock, rate_halflife_s)  # images refused (queue full, deadline)

    # -- limits ------------------------------------------------------------------------------
    def queue_limit(self) -> int:
        """Most images allowed to wait: what the measured rate clears within the deadline."""
        drained = int(self.current_rate() * self.max_wait_s)
        return min(self.max_queue_images, max(self.capacity, drained))

    def set_capacity(self, capacity: int) -> None:
        """New batch capacity (replicas came or went); waiters that now fit are admitted."""
        self.capacity = max(1, capacity)
        self._grant()

    # -- admission ---------------------------------------------------------------------------
    async def acquire(self, images: int) -> int:
        """Wait for room for `images` (capped at capacity); returns the slots taken."""
        n = min(max(images, 1), self.capacity)
        if not self._queue and self.in_flight + n <= self.capacity:
            self.in_flight += n
            return n
        if self.waiting_images + n > self.queue_limit():
            self._refused.add(n)
            raise Overloaded(
                "queue_full",
                f"{self.in_flight} images at the models and {self.waiting_images} waiting; "
                "retry later",
            )
        waiter = _Waiter(n, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        self.waiting_images += n
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.max_wait_s)
        except TimeoutError:
            if waiter.future.done():  # granted at the last moment: keep it
                return n
            self._queue.remove(waiter)
            self.waiting_images -= n
            waiter.future.cancel()
            self._grant()  # a large waiter leaving may let smaller ones behind it in
            self._refused.add(n)
            raise Overloaded(
                "deadline", f"waited {self.max_wait_s:g} s for the models; retry later"
            ) from None
        except asyncio.CancelledError:  # the client went away
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(n, completed=False)
            elif waiter in self._queue:
                self._queue.remove(waiter)
                self.waiting_images -= n
                self._grant()
            raise
        return n

    def release(self, slots: int, *, completed: bool = True) -> None:
        """Give back `slots`; `completed` images count towards the measured rate."""
        self.in_flight -= slots
        if completed:
            self._completed.add(slots)
        self._grant()

    @asynccontextmanager
    async def slot(self, images: int) -> AsyncIterator[int]:
        """`async with admission.slot(n):` the models may be called for n images."""
        taken = await self.acquire(images)
        ok = False
        try:
            yield taken
            ok = True
        finally:
            self.release(taken, completed=ok)

    # -- internals ---------------------------------------------------------------------------
    def _grant(self) -> None:
        while self._queue and self.in_flight + self._queue[0].images <= self.capacity:
            waiter = self._queue.popleft()
            self.waiting_images -= waiter.images
            if waiter.future.done():  # cancelled while queued
                continue
            self.in_flight += waiter.images
            waiter.future.set_result(None)

    def current_rate(self) -> float:
        """Images per second through the models, decayed to now."""
        return self._completed.now()

    def retry_after(self, base_s: int, cap_s: int) -> int:
        """Seconds a refused client is asked to wait: `base_s x (1 + refused / completed)`
        rounded up from hundredths, at most `cap_s` (a completed rate under 1 image/s counts
        as 1)."""
        overload = self._refused.now() / max(self._completed.now(), 1.0)
        return min(cap_s, max(base_s, math.ceil(round(base_s * (1 + overload), 2))))


class _Rate:
    """Events per second, exponentially weighted: a count decaying with the half-life, scaled
    so that a steady stream of r per second reads r."""

    def __init__(self, clock: Callable[[], float], halflife_s: float):
        self._clock, self._halflife = clock, halflife_s
        self._value, self._at = 0.0, None

    def add(self, n: int) -> None:
        self._value = self.now() + n * math.log(2) / self._halflife
        self._at = self._clock()

    def now(self) -> float:
        """The rate decayed to now (it falls while nothing happens)."""
        if self._at is None:
            return 0.0
        return self._value * 0.5 ** ((self._clock() - self._at) / self._halflife)
