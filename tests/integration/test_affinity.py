"""Cache-aware replica choice through real fake servers on loopback: a session's requests stay
on one replica of a slot, a replica that dies moves only its sessions, and the cached prompt
tokens the servers report reach CallResult, CallEvent and the llm.call event."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from familiar.client.backend import CallEvent, SlotClient
from familiar.client.wire import RetryPolicy
from familiar.config.slots import Slot
from familiar.context import bound_affinity, bound_correlation_id
from familiar.errors import BackendHTTPError
from familiar.telemetry import llm_call_fields
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.prefix_cache import PrefixCacheConfig
from tests.support.scripts import articles, echo_translated, report, translate

PREFIX = " ".join(f"shared{i}" for i in range(64))


async def no_sleep(_s: float) -> None:
    return None


@asynccontextmanager
async def replicas(n: int, **cache: object) -> AsyncIterator[list[FakeOpenAIServer]]:
    async with AsyncExitStack() as stack:
        servers = []
        for _ in range(n):
            config = PrefixCacheConfig(block=4, **cache)  # type: ignore[arg-type]
            servers.append(await stack.enter_async_context(FakeOpenAIServer(prefix_cache=config)))
        yield servers


def client(
    servers: list[FakeOpenAIServer], affinity: str = "session", warm: bool = True, **kw: object
) -> SlotClient:
    slot = Slot(
        name="w",
        url=[s.url for s in servers],
        model="fake-model",
        parallel=8,
        affinity=affinity,  # type: ignore[arg-type]
        warm=warm,
    )
    return SlotClient(slot, retry=RetryPolicy(attempts=4, sleep=no_sleep), **kw)  # type: ignore[arg-type]


async def session(c: SlotClient, cid: str, n: int) -> None:
    with bound_correlation_id(cid):
        for i in range(n):
            system = f"{cid} {PREFIX}"  # a session's own prefix
            await c.chat(
                [{"role": "system", "content": system}, {"role": "user", "content": f"t{i}"}]
            )


def homes(servers: list[FakeOpenAIServer]) -> dict[str, set[int]]:
    """Correlation id -> the servers (by index) that got its requests."""
    out: dict[str, set[int]] = defaultdict(set)
    for i, srv in enumerate(servers):
        for r in srv.requests:
            out[r["headers"]["x-correlation-id"]].add(i)
    return out


async def test_affinity_keeps_each_sessions_requests_on_one_replica() -> None:
    async with replicas(2) as servers:
        async with client(servers) as c:
            for k in range(8):
                await session(c, f"s{k}", 6)
        seen = homes(servers)
        assert len(seen) == 8 and all(len(where) == 1 for where in seen.values()), seen
        assert sum(s.stats["requests"] for s in servers) == 48
        # the cache served every request of a session but its first
        cached = sum(s.prefix_cache.cached_tokens for s in servers if s.prefix_cache)
        assert cached == 8 * 5 * 64


async def test_without_affinity_a_session_is_spread_over_the_replicas() -> None:
    async with replicas(2) as servers:
        async with client(servers, affinity="none") as c:
            for k in range(4):
                await session(c, f"s{k}", 6)
        assert all(where == {0, 1} for where in homes(servers).values())


async def test_an_explicit_affinity_key_wins_over_the_correlation_id() -> None:
    async with replicas(3) as servers:
        async with client(servers) as c:
            with bound_affinity("article-1"):
                for k in range(6):
                    await session(c, f"s{k}", 2)
        used = {i for where in homes(servers).values() for i in where}
        assert len(used) == 1


async def test_a_dead_replica_moves_only_its_sessions() -> None:
    async with replicas(3) as servers:
        async with client(servers) as c:
            ids = [f"s{k}" for k in range(16)]
            for cid in ids:
                await session(c, cid, 2)
            before = {cid: next(iter(w)) for cid, w in homes(servers).items()}
            dead = Counter(before.values()).most_common(1)[0][0]
            await servers[dead].stop()
            for srv in servers:
                srv.reset()
            for cid in ids:
                await session(c, cid, 3)
        after = homes([s for s in servers])
        for cid in ids:
            where = after[cid] - {dead}
            assert len(where) == 1, (cid, after[cid])
            if before[cid] != dead:
                assert after[cid] == {before[cid]}, cid  # untouched: not even tried elsewhere
            else:
                assert where != {dead}
        moved = [cid for cid in ids if before[cid] == dead]
        assert moved and len(moved) < len(ids)


@pytest.mark.parametrize("style", ["openai", "llama"])
@pytest.mark.parametrize("stream", [True, False])
async def test_cached_tokens_reach_the_result_the_event_and_telemetry(
    style: str, stream: bool
) -> None:
    events: list[CallEvent] = []
    async with replicas(1, style=style) as servers:
        async with client(servers, hooks=[events.append], stream=stream) as c:
            messages = [{"role": "system", "content": PREFIX}, {"role": "user", "content": "a b"}]
            with bound_correlation_id("c1"):
                first = await c.chat(messages)
                second = await c.chat(messages)
    assert first.cached_tokens == 0 and first.prompt_tokens == 66
    assert second.cached_tokens == 64 and second.prompt_tokens == 66
    assert [e.cached_tokens for e in events] == [0, 64]
    assert llm_call_fields(events[1])["gen_ai.usage.cache_read.input_tokens"] == 64


async def test_a_server_that_reports_no_cache_leaves_cached_tokens_unknown() -> None:
    async with FakeOpenAIServer() as srv:
        slot = Slot(name="w", url=srv.url, model="fake-model", parallel=1)
        async with SlotClient(slot) as c:
            result = await c.chat([{"role": "user", "content": "hello"}])
    assert result.cached_tokens is None and result.prompt_tokens == 1


async def test_a_batch_keeps_each_articles_chunks_on_one_replica(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        for srv in (a, b):
            srv.handler = echo_translated
            srv.configure(latency_s=0.01)
        urls = ", ".join(f'"{s.url}"' for s in (a, b))
        (tmp_path / "slots.toml").write_text(
            f'[slots.translator]\nurl = [{urls}]\nmodel = "general-llm"\nruntime = "vllm"\n'
            "parallel = 2\ntimeout_s = 5\n"
            f'[slots.naughty]\nurl = "{a.url}"\nmodel = "m"\nparallel = 1\n'
        )
        (tmp_path / "CLAUDE.md").write_text("familiar: naughty x translator\n")
        src = articles(tmp_path, 16)
        out = tmp_path / "out"
        assert await translate(tmp_path, str(src), "--out", str(out), "--json") == 0
        assert {r["status"] for r in report(capsys)} == {"ok"}
        where: dict[str, set[str]] = defaultdict(set)
        for srv in (a, b):
            for r in srv.requests:
                marks = set(re.findall(r"緑茶(\d+)", json.dumps(r["body"], ensure_ascii=False)))
                assert len(marks) == 1, marks  # every request names its article (anchor)
                where[marks.pop()].add(srv.url)
        assert len(where) == 16
        assert all(len(urls) == 1 for urls in where.values()), where
        # keyed by article, not by the batch: a batch is not all on one replica
        assert a.stats["requests"] and b.stats["requests"]


WARM_PREFIX = " ".join(f"context{i}" for i in range(300))  # ~2,700 characters


async def fan_out(c: SlotClient, n: int, prefix: str = WARM_PREFIX) -> list[int | None]:
    async def one(i: int) -> int | None:
        messages = [
            {"role": "system", "content": prefix},
            {"role": "user", "content": f"subtask {i}"},
        ]
        return (await c.chat(messages)).cached_tokens

    with bound_correlation_id("session-w"):
        return list(await asyncio.gather(*(one(i) for i in range(n))))


@pytest.mark.parametrize("warm", [True, False])
async def test_warm_then_fan_out_lets_the_rest_find_the_prefix_cached(warm: bool) -> None:
    async with replicas(1, prefill_s_per_token=2e-4) as servers:
        async with client(servers, warm=warm) as c:
            cached = await fan_out(c, 5)
    if warm:
        assert sorted(cached) == [0, 300, 300, 300, 300]
        assert c.warm_gate is not None and c.warm_gate.held == 4
    else:  # they start together and each computes the prefix
        assert cached == [0] * 5 and servers[0].stats["max_in_flight"] == 5


async def test_a_warmer_that_fails_does_not_hold_the_others() -> None:
    async with replicas(1, prefill_s_per_token=1e-4) as servers:
        servers[0].add_faults([{"kind": "status", "status": 400}])  # not retried
        async with client(servers) as c:
            with pytest.raises(BackendHTTPError):
                await fan_out(c, 1)
            cached = await fan_out(c, 4)
            assert sorted(cached) == [0, 300, 300, 300]
            servers[0].add_faults([{"kind": "status", "status": 503}])  # retried
            other = WARM_PREFIX.replace("context", "other")
            # the warmer's retry is still the warm-up: the others wait and find it cached
            assert sorted(await fan_out(c, 3, other)) == [0, 300, 300]
        assert servers[0].stats["requests"] == 1 + 4 + 4


async def test_workers_whose_prompts_begin_like_the_planners_follow_it_and_find_it_cached() -> None:
    # a session's shape: the planner's request, then workers whose prompts begin like it
    async with replicas(2, prefill_s_per_token=1e-4) as servers:
        async with client(servers) as c:
            with bound_correlation_id("session-p"):
                await c.chat(
                    [
                        {"role": "system", "content": WARM_PREFIX},
                        {"role": "user", "content": "plan"},
                    ]
                )
                workers = await asyncio.gather(
                    *(
                        c.chat(
                            [
                                {"role": "system", "content": WARM_PREFIX},
                                {"role": "user", "content": f"subtask {i}"},
                            ]
                        )
                        for i in range(4)
                    )
                )
    assert homes(servers)["session-p"] in ({0}, {1})  # all where the planner went
    # the planner warmed the prefix: no worker waited, every one found it cached
    assert c.warm_gate is not None and c.warm_gate.held == 0
    assert [w.cached_tokens for w in workers] == [300] * 4


async def test_long_prompts_that_share_nothing_are_balanced_within_a_session() -> None:
    async with replicas(2, prefill_s_per_token=1e-5) as servers:
        async with client(servers) as c:
            with bound_correlation_id("session-u"):
                await asyncio.gather(
                    *(
                        c.chat([{"role": "system", "content": f"own{i} {WARM_PREFIX}"}])
                        for i in range(8)
                    )
                )
    assert [s.stats["requests"] for s in servers] == [4, 4]
    assert c.warm_gate is not None and c.warm_gate.held == 0
