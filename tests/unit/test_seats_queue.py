"""``Seats`` is a process's one queue for a deployment: sessions first, then first come;
a source (a ledger's deployment) keeps no queue and only hands seats to it."""

from __future__ import annotations

import asyncio

import pytest

from familiar.ledger.base import DeploymentSeats
from familiar.seats import Kind, Lease, Seats


class Source:
    """A source of ``cap`` numbered seats (``reserve`` kept from batches) that grants
    only when the test says so: what a ledger looks like to the queue."""

    def __init__(self, cap: int, reserve: int = 0, *, eager: bool = False) -> None:
        self.cap, self.reserve, self.eager = cap, reserve, eager
        self.free = list(range(cap))
        self.queue: Seats | None = None
        self.wanted_calls = 0
        self.given_back: list[int] = []

    def usable(self, kind: Kind) -> int:
        return self.cap - self.reserve if kind == "batch" else self.cap

    def attach(self, queue: Seats) -> None:
        self.queue = queue

    def try_take(self, kind: Kind) -> Lease | None:
        if not self.eager:
            return None
        seats = [s for s in self.free if s < self.usable(kind)]
        if not seats:
            return None
        self.free.remove(seats[0])
        return Lease(seats[0])

    def wanted(self) -> None:
        self.wanted_calls += 1

    async def put_back(self, lease: Lease) -> None:
        self.given_back.append(lease.seat)
        self.free.append(lease.seat)

    def lost(self, lease: Lease) -> asyncio.Future[None] | None:
        return None

    def hand(self, seat: int) -> bool:
        assert self.queue is not None
        self.free.remove(seat)
        return self.queue.grant(Lease(seat))


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_sessions_first_then_first_come_within_a_kind() -> None:
    src = Source(4)
    seats = Seats(4, ledger=src, kind="batch")
    order: list[str] = []

    async def take(name: str, kind: Kind) -> None:
        held = await seats.acquire(kind)
        order.append(f"{name}:{held.lease.seat if held.lease else '-'}")

    tasks = [
        asyncio.create_task(take("b1", "batch")),
        asyncio.create_task(take("b2", "batch")),
        asyncio.create_task(take("i1", "interactive")),
        asyncio.create_task(take("i2", "interactive")),
    ]
    await settle()
    assert seats.wants() == "interactive" and seats.waiting == 4
    assert [a.kind for a in seats.live()] == ["interactive", "interactive", "batch", "batch"]
    for seat in (3, 2, 1, 0):
        assert src.hand(seat)
    await asyncio.gather(*tasks)
    assert order == ["i1:3", "i2:2", "b1:1", "b2:0"]
    assert seats.wants() is None and seats.in_use == 4 and seats.peak == 4


async def test_a_reserved_seat_goes_to_no_batch_acquirer() -> None:
    src = Source(2, reserve=1)
    seats = Seats(2, ledger=src, kind="batch")
    waiter = asyncio.create_task(seats.acquire())
    await settle()
    assert not src.hand(1)  # seat 1 is reserved: the batch acquirer may not use it
    assert not waiter.done()
    assert src.hand(0)
    held = await waiter
    assert held.lease == Lease(0)


async def test_a_seat_granted_as_its_acquirer_is_cancelled_goes_back_to_the_source() -> None:
    src = Source(1)
    seats = Seats(1, ledger=src)
    waiter = asyncio.create_task(seats.acquire())
    await settle()
    assert src.hand(0)
    waiter.cancel()  # the grant and the cancellation land in the same loop turn
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert src.given_back == [0] and seats.in_use == 0 and seats.waiting == 0


async def test_a_cancelled_acquirer_leaves_the_queue_and_the_source_looks_again() -> None:
    src = Source(1)
    seats = Seats(1, ledger=src)
    waiter = asyncio.create_task(seats.acquire())
    await settle()
    calls = src.wanted_calls
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert seats.live() == [] and seats.wants() is None
    assert src.wanted_calls == calls + 1
    assert not seats.grant(Lease(0))  # nobody left to take it


async def test_fail_and_fail_all_end_the_waits() -> None:
    src = Source(1)
    seats = Seats(1, ledger=src)
    first = asyncio.create_task(seats.acquire())
    second = asyncio.create_task(seats.acquire("batch"))
    await settle()
    seats.fail(seats.live()[0], ConnectionError("gone"))
    with pytest.raises(ConnectionError):
        await first
    seats.fail_all(TimeoutError("closing"))
    with pytest.raises(TimeoutError):
        await second
    seats.fail_all()  # nothing left: a no-op
    assert seats.waiting == 0


async def test_the_fast_path_never_jumps_the_queue() -> None:
    src = Source(1, eager=True)
    seats = Seats(1, ledger=src)
    held = await seats.acquire()  # nobody waits: taken at once
    waiter = asyncio.create_task(seats.acquire())
    await settle()
    src.eager = True
    await seats.release(held)  # back to the source; the source grants on its own turn
    third = asyncio.create_task(seats.acquire())
    await settle()
    assert not third.done()  # someone waits: no try_take, it queues behind
    assert src.hand(0)
    await waiter
    assert not third.done()
    third.cancel()
    with pytest.raises(asyncio.CancelledError):
        await third


async def test_waits_are_split_into_this_process_and_the_others() -> None:
    src = Source(1)
    seats = Seats(1, ledger=src)
    waiter = asyncio.create_task(seats.acquire())
    await asyncio.sleep(0.05)  # nothing of ours is held: waiting for other processes
    assert seats.statistics().ledger_waiting == 1
    assert src.hand(0)
    first = await waiter
    assert first.local_wait_s == 0.0 and first.ledger_wait_s >= 0.04
    second = asyncio.create_task(seats.acquire())
    await asyncio.sleep(0.05)  # our own holder keeps it waiting: local
    assert seats.statistics().ledger_waiting == 0
    await seats.release(first)
    assert src.hand(0)
    held = await second
    assert held.local_wait_s >= 0.04 and held.local_wait_s > held.ledger_wait_s


class Dep(DeploymentSeats):
    """A ledger deployment that never grants: only the queue plumbing of the base."""

    def wanted(self) -> None:
        pass

    async def put_back(self, lease: Lease) -> None:
        pass


async def test_a_ledger_deployment_has_one_queue_in_a_process() -> None:
    dep = Dep("d", "m @ gpu", 2, 1)
    seats = Seats(2, ledger=dep, kind="batch")
    assert dep.queue is seats and dep.attached is seats
    with pytest.raises(ValueError, match="queue in this process already"):
        Seats(2, ledger=dep)
    other = Dep("e", "m @ gpu1", 1, 0)
    assert other.queue is other.queue  # made on first use, then the same
    waiter = asyncio.create_task(dep.acquire("interactive"))  # through the one queue
    await settle()
    assert [a.kind for a in seats.live()] == ["interactive"]
    assert seats.grant(Lease(1))
    assert await waiter == Lease(1)
    await dep.release(Lease(1))
    assert seats.in_use == 0


async def test_in_memory_seats_are_fifo_and_never_barge() -> None:
    seats = Seats(1)
    first = await seats.acquire()
    order: list[int] = []

    async def take(n: int) -> None:
        held = await seats.acquire()
        order.append(n)
        await asyncio.sleep(0)
        await seats.release(held)

    tasks = [asyncio.create_task(take(n)) for n in range(5)]
    await settle()
    assert seats.waiting == 5
    await seats.release(first)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4] and seats.in_use == 0 and seats.peak == 1
    async with seats:
        assert seats.in_use == 1
    with pytest.raises(RuntimeError):
        await seats.release()
