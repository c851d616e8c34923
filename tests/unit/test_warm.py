"""Warm, then fan out: who warms a prefix and who waits (pure asyncio, no server)."""

from __future__ import annotations

import asyncio

import pytest

from familiar.client.warm import WarmGate, prompt_head

LONG = "x" * 3000


def chat(system: str, user: str = "u") -> dict[str, object]:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def test_prefix_keys() -> None:
    gate = WarmGate(chars=2000)
    assert gate.key(None, chat(LONG)) is None  # no affinity: nothing to keep together
    assert gate.key("s1", chat("short")) is None  # a short prompt is cheap to compute
    assert gate.key("s1", chat(LONG, "a")) == gate.key("s1", chat(LONG, "b"))
    assert gate.key("s1", chat(LONG)) != gate.key("s2", chat(LONG))
    assert gate.key("s1", chat(LONG)) != gate.key("s1", chat("y" + LONG))
    assert gate.key("s1", {"prompt": LONG}) is not None
    assert gate.key("s1", {"prompt": 7}) is None
    # the head spans messages: a short system prompt and a long shared user prefix
    assert gate.key("s1", chat("sys", LONG + "a")) == gate.key("s1", chat("sys", LONG + "b"))
    assert prompt_head(chat("ab", "cd"), 4) == "ab\0c"


async def test_the_first_warms_the_rest_wait_for_its_first_token() -> None:
    gate = WarmGate(chars=10)
    order: list[str] = []
    warmer = await gate.enter("k")
    assert warmer is not None

    async def follower(name: str) -> None:
        assert await gate.enter("k") is None
        order.append(name)

    tasks = [asyncio.create_task(follower(f"f{i}")) for i in range(3)]
    await asyncio.sleep(0.01)
    assert order == [] and gate.held == 3
    gate.warmed("k", warmer)
    await asyncio.gather(*tasks)
    assert sorted(order) == ["f0", "f1", "f2"]
    gate.leave("k", warmer)  # the end of the warmer's call changes nothing now
    assert await gate.enter("k") is None  # warm: nobody waits any more
    assert gate.held == 3


async def test_a_warmer_that_fails_hands_the_warm_up_to_one_waiter() -> None:
    gate = WarmGate(chars=10)
    first = await gate.enter("k")
    assert first is not None
    got: list[asyncio.Future[None] | None] = []

    async def waiter() -> None:
        got.append(await gate.enter("k"))

    tasks = [asyncio.create_task(waiter()) for _ in range(3)]
    await asyncio.sleep(0.01)
    gate.leave("k", first)  # failed before its first token
    await asyncio.sleep(0.01)
    new = [f for f in got if f is not None]
    assert len(got) == 1 and len(new) == 1  # one warms again, two still wait
    gate.warmed("k", new[0])
    await asyncio.gather(*tasks)
    assert got[1:] == [None, None]


async def test_a_cancelled_waiter_leaves_the_warm_up_alone() -> None:
    gate = WarmGate(chars=10)
    warmer = await gate.enter("k")
    assert warmer is not None
    task = asyncio.create_task(gate.enter("k"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not warmer.done()
    gate.warmed("k", warmer)
    assert await gate.enter("k") is None


async def test_warm_keys_are_remembered_within_a_bound() -> None:
    gate = WarmGate(chars=10, remember=2)
    for key in ("a", "b", "c"):
        fut = await gate.enter(key)
        assert fut is not None
        gate.warmed(key, fut)
    assert await gate.enter("c") is None and await gate.enter("b") is None
    again = await gate.enter("a")  # forgotten: it warms again (its cache may be gone too)
    assert again is not None
    gate.leave("a", again)
