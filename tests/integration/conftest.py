"""Fixtures shared by the integration tests (helpers live in tests/support)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import echo_translated


@pytest.fixture
async def translator(tmp_path: Path) -> AsyncIterator[FakeOpenAIServer]:
    """A translator slot (3 seats, echoing in English) in a workspace at ``tmp_path``."""
    async with FakeOpenAIServer() as srv:
        srv.handler = echo_translated
        (tmp_path / "slots.toml").write_text(
            f'[slots.translator]\nurl = "{srv.url}"\nmodel = "general-llm"\nruntime = "vllm"\n'
            "parallel = 3\ntimeout_s = 5\n"
            f'[slots.naughty]\nurl = "{srv.url}"\nmodel = "m"\nparallel = 1\n'
        )
        (tmp_path / "CLAUDE.md").write_text("familiar: naughty x translator\n")
        yield srv


@pytest.fixture
async def planner_and_worker(tmp_path: Path) -> AsyncIterator[dict[str, FakeOpenAIServer]]:
    """``grandpa x naughty`` on two servers, one seat each; ``slots.toml`` written by the
    test (``tests.support.scripts.write_fleet``)."""
    servers = {r: FakeOpenAIServer() for r in ("grandpa", "naughty")}
    for s in servers.values():
        await s.start()
    (tmp_path / "CLAUDE.md").write_text("familiar: grandpa x naughty\n")
    try:
        yield servers
    finally:
        for s in servers.values():
            await s.stop()
