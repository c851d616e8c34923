"""The real embedded llama-server reports the prompt tokens it served from its cache, and
familiar reads them (``timings.cache_n`` or ``usage.prompt_tokens_details``), streamed or not."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from familiar.client.backend import SlotClient
from familiar.config.slots import Slot
from familiar.local import LocalInfo, LocalServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalInfo]:
    home: Path = tmp_path_factory.mktemp("familiar-home")
    info = asyncio.run(LocalServer(home).ensure_running())
    try:
        yield info
    finally:
        asyncio.run(LocalServer(home).stop())


@pytest.mark.parametrize("stream", [True, False])
async def test_the_second_request_with_a_shared_prefix_reads_cached_tokens(
    server: LocalInfo, stream: bool
) -> None:
    slot = Slot(name="e", url=server.base_url, model=server.model_name, runtime="llama.cpp")
    context = " ".join(f"Fact {i}: the tea garden {i} grows green tea." for i in range(60))
    messages = [{"role": "system", "content": context}, {"role": "user", "content": "Say hi."}]
    async with SlotClient(slot, stream=stream) as c:
        first = await c.chat(messages, max_tokens=4, temperature=0)
        second = await c.chat(messages, max_tokens=4, temperature=0)
    assert first.prompt_tokens and second.prompt_tokens == first.prompt_tokens
    assert second.cached_tokens is not None
    assert second.prompt_tokens // 2 < second.cached_tokens <= second.prompt_tokens
