"""Pure parts of the dispatcher: the bounded work board, seats, backoff."""

from __future__ import annotations

import asyncio

import pytest

from familiar.client.backend import RetryPolicy
from familiar.dispatch import WorkBoard, WorkItem
from familiar.errors import BoardClosed
from familiar.seats import Seats


def item(i: str, role: str = "naughty") -> WorkItem[int]:
    return WorkItem(i, role, 0)


async def test_board_is_bounded_and_put_waits_for_room() -> None:
    board: WorkBoard[int] = WorkBoard(2)
    await board.put(item("a"))
    await board.put(item("b"))
    blocked = asyncio.create_task(board.put(item("c")))
    await asyncio.sleep(0.01)
    assert not blocked.done() and len(board) == 2
    assert (await board.take(["naughty"])) == item("a")
    await asyncio.wait_for(blocked, 1)
    assert len(board) == 2


def test_board_must_be_bounded() -> None:
    with pytest.raises(ValueError):
        WorkBoard(0)


async def test_take_prefers_own_role_then_steals_in_order() -> None:
    board: WorkBoard[int] = WorkBoard(10)
    await board.put(item("h1", "naughty"))
    await board.put(item("e1", "kindergarten"))
    assert (await board.take(["kindergarten", "naughty"])).id == "e1"
    assert (await board.take(["kindergarten", "naughty"])).id == "h1"
    assert board.pending("naughty") == 0


async def test_closed_board_drains_then_returns_none() -> None:
    board: WorkBoard[int] = WorkBoard(10)
    await board.put(item("a"))
    waiter = asyncio.create_task(board.take(["translator"]))
    await board.close()
    assert await asyncio.wait_for(waiter, 1) is None
    assert (await board.take(["naughty"])) == item("a")
    assert await board.take(["naughty"]) is None
    with pytest.raises(BoardClosed):
        await board.put(item("b"))


async def test_seats_count_in_use_waiting_and_peak() -> None:
    seats = Seats(2)
    await seats.acquire()
    await seats.acquire()
    third = asyncio.create_task(seats.acquire())
    await asyncio.sleep(0.01)
    assert (seats.in_use, seats.waiting, seats.free) == (2, 1, 0)
    await seats.release()
    await asyncio.wait_for(third, 1)
    assert (seats.in_use, seats.waiting, seats.peak) == (2, 0, 2)
    await seats.release()
    await seats.release()
    with pytest.raises(RuntimeError):
        await seats.release()


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    policy = RetryPolicy(initial_s=1.0, max_s=8.0, max_retry_after_s=60)
    waits = [policy.backoff(n, None) for n in range(1, 8)]
    assert 0.5 <= waits[0] <= 1.0
    assert all(w <= 8.0 for w in waits)
    assert 4.0 <= waits[6] <= 8.0
    assert policy.backoff(1, 30.0) == 30.0
    # past max_retry_after_s the server's wish is not honoured: the normal backoff applies
    assert 0.5 <= policy.backoff(1, 1000.0) <= 1.0


async def test_no_stealing_while_an_owner_is_idle() -> None:
    board: WorkBoard[int] = WorkBoard(10)
    owner = asyncio.create_task(board.take(["kindergarten", "naughty"]))
    await asyncio.sleep(0)  # the kindergarten worker is now idle, waiting
    thief = asyncio.create_task(board.take(["naughty", "kindergarten"]))
    await asyncio.sleep(0)
    await board.put(item("e1", "kindergarten"))
    assert (await asyncio.wait_for(owner, 1)).id == "e1"
    await asyncio.sleep(0.01)
    assert not thief.done()  # nothing to steal any more
    await board.put(item("e2", "kindergarten"))  # no kindergarten worker idle now
    assert (await asyncio.wait_for(thief, 1)).id == "e2"
