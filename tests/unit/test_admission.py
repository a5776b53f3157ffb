"""The ingress's admission queue: FIFO grants, refusals at once, deadlines, the measured rate."""

from __future__ import annotations

import asyncio

import pytest

from serve.admission import Admission, Overloaded


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


async def settle() -> None:
    """Let woken tasks run (a grant passes through wait_for and shield)."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_grants_in_arrival_order_as_slots_are_released():
    async def scenario():
        adm = Admission(capacity=3, max_wait_s=5, max_queue_images=10)
        assert await adm.acquire(2) == 2 and await adm.acquire(1) == 1
        order: list[str] = []

        async def wait(name: str, n: int):
            await adm.acquire(n)
            order.append(name)

        tasks = [asyncio.create_task(wait(name, 1)) for name in "abc"]
        await settle()
        assert (adm.in_flight, adm.waiting_images) == (3, 3)
        adm.release(1)
        await settle()
        assert order == ["a"]
        adm.release(2)
        await asyncio.gather(*tasks)
        assert order == ["a", "b", "c"]
        assert (adm.in_flight, adm.waiting_images) == (3, 0)  # a, b and c hold the slots

    run(scenario())


def test_a_full_queue_refuses_at_once_without_queueing():
    async def scenario():
        # No rate measured yet: the queue holds one capacity's worth (2 images).
        adm = Admission(capacity=2, max_wait_s=5, max_queue_images=100)
        await adm.acquire(2)
        waiters = [asyncio.create_task(adm.acquire(1)) for _ in range(2)]
        await settle()
        assert adm.queue_limit() == 2 and adm.waiting_images == 2
        with pytest.raises(Overloaded) as info:
            await adm.acquire(1)
        assert info.value.reason == "queue_full"
        assert (adm.in_flight, adm.waiting_images) == (2, 2)
        adm.release(2)
        assert await asyncio.gather(*waiters) == [1, 1]

    run(scenario())


def test_a_request_past_its_deadline_is_refused_and_leaves_the_queue():
    async def scenario():
        adm = Admission(capacity=1, max_wait_s=0.05, max_queue_images=10)
        await adm.acquire(1)
        with pytest.raises(Overloaded) as info:
            await adm.acquire(1)
        assert info.value.reason == "deadline"
        assert (adm.in_flight, adm.waiting_images) == (1, 0)
        adm.release(1)
        assert adm.in_flight == 0  # the refused request never took the freed slot

    run(scenario())


def test_a_batch_counts_its_images_and_is_capped_at_capacity():
    async def scenario():
        adm = Admission(capacity=4, max_wait_s=5, max_queue_images=10)
        await adm.acquire(2)
        batch = asyncio.create_task(adm.acquire(3))  # 2 + 3 > 4: waits
        await settle()
        assert (adm.in_flight, adm.waiting_images) == (2, 3)
        adm.release(2)
        assert await batch == 3
        adm.release(3)
        assert await adm.acquire(10) == 4  # larger than capacity: runs alone, whole

    run(scenario())


def test_a_large_waiter_blocks_smaller_ones_behind_it_until_it_leaves():
    """FIFO: a 3-image batch at the head is not overtaken by a 1-image request behind it;
    when the batch times out, the request behind it is admitted at once."""

    async def scenario():
        adm = Admission(capacity=4, max_wait_s=0.05, max_queue_images=10)
        await adm.acquire(1)
        await adm.acquire(2)
        big = asyncio.create_task(adm.acquire(3))
        await settle()
        adm.max_wait_s = 5  # the next waiter may wait long
        small = asyncio.create_task(adm.acquire(1))
        await settle()
        assert not small.done()  # a slot is free, but the batch is ahead
        with pytest.raises(Overloaded):
            await big
        assert await small == 1 and adm.in_flight == 4

    run(scenario())


def test_a_cancelled_waiter_gives_its_place_to_the_next():
    async def scenario():
        adm = Admission(capacity=2, max_wait_s=5, max_queue_images=10)
        await adm.acquire(2)
        gone = asyncio.create_task(adm.acquire(1))
        nxt = asyncio.create_task(adm.acquire(1))
        await settle()
        gone.cancel()
        await settle()
        assert adm.waiting_images == 1
        adm.release(1)
        assert await nxt == 1 and adm.in_flight == 2

    run(scenario())


def test_more_capacity_admits_waiters():
    async def scenario():
        adm = Admission(capacity=1, max_wait_s=5, max_queue_images=10)
        await adm.acquire(1)
        waiting = asyncio.create_task(adm.acquire(1))
        await settle()
        adm.set_capacity(2)  # a second base replica came up
        assert await waiting == 1 and adm.in_flight == 2

    run(scenario())


def test_the_measured_rate_reads_a_steady_stream_and_sizes_the_queue():
    clock = FakeClock()
    adm = Admission(capacity=8, max_wait_s=2.0, max_queue_images=1000, clock=clock)
    for _ in range(1200):  # 4 images every 0.1 s = 40 images/s for 120 s (24 half-lives)
        clock.now += 0.1
        adm.in_flight += 4
        adm.release(4)
    # The discrete estimator's steady value: 4 ln2 / (5 (1 - 2^-(0.1/5))), 40.28 images/s.
    assert adm.current_rate() == pytest.approx(40.28, abs=0.01)
    assert adm.queue_limit() == 80  # int(40.28 * 2.0)
    clock.now += 5.0  # one half-life without completions: the rate halves
    assert adm.current_rate() == pytest.approx(20.14, abs=0.01)
    assert adm.queue_limit() == 40
    adm.max_queue_images = 30
    assert adm.queue_limit() == 30  # the hard cap wins
    clock.now += 60
    assert adm.queue_limit() == 8  # never below one capacity's worth


def test_a_failed_call_frees_its_slots_without_counting_as_throughput():
    clock = FakeClock()

    async def scenario():
        adm = Admission(capacity=2, max_wait_s=1, max_queue_images=10, clock=clock)
        with pytest.raises(RuntimeError):
            async with adm.slot(2):
                raise RuntimeError("model failed")
        assert adm.in_flight == 0 and adm.current_rate() == 0.0
        async with adm.slot(1):
            pass
        assert adm.current_rate() > 0

    run(scenario())


def test_retry_after_grows_with_the_share_of_images_refused():
    clock = FakeClock()

    async def scenario():
        adm = Admission(capacity=4, max_wait_s=1, max_queue_images=0, clock=clock)
        assert adm.retry_after(2, 30) == 2  # nothing measured yet: the base
        adm.in_flight = 4  # the models are full and nothing may wait: every request is refused

        async def step(refused: int) -> None:
            clock.now += 0.1
            for _ in range(refused):
                with pytest.raises(Overloaded):
                    await adm.acquire(1)
            adm.release(4)  # 40 images/s completed
            adm.in_flight += 4

        for _ in range(1200):  # 30 images/s refused against 40 completed: 0.75 of it
            await step(3)
        assert adm.retry_after(2, 30) == 4  # ceil(2 x 1.75)
        assert adm.retry_after(2, 3) == 3  # capped
        for _ in range(1200):  # 90 refused against 40: 2.25
            await step(9)
        assert adm.retry_after(2, 30) == 7  # ceil(2 x 3.25)
        assert adm.retry_after(1, 30) == 4  # ceil(1 x 3.25)
        for _ in range(1200):  # the overload is over: refusals decay, the base returns
            await step(0)
        assert adm.retry_after(2, 30) == 2

    run(scenario())


def test_retry_after_counts_a_batch_by_its_images_and_holds_a_stalled_model_at_the_cap():
    clock = FakeClock()

    async def scenario():
        adm = Admission(capacity=8, max_wait_s=1, max_queue_images=0, clock=clock)
        adm.in_flight = 8
        for _ in range(1200):  # one 3-image batch refused every 0.1 s, nothing completes
            clock.now += 0.1
            with pytest.raises(Overloaded):
                await adm.acquire(3)
        # 30 images/s refused (the estimator reads 3 ln2 / (5 (1 - 2^-0.02)) = 30.21) over a
        # completed rate floored at 1/s: ceil(2 x 31.21) = 63, over the cap of 30
        assert adm.retry_after(2, 30) == 30
        assert adm.retry_after(2, 100) == 63

    run(scenario())
