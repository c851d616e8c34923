"""The embedded backend for real: llama-server with Gemma 3 270M from familiar[local].

No skip when the packages are missing: these tests fail then (CI installs the extra).
The model loads once per session; replies are kept short so the file runs in seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from familiar import local
from familiar.local import LocalInfo, LocalServer

pytestmark = pytest.mark.e2e

MODEL = "gemma-3-270m"


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("familiar-home")


@pytest.fixture(scope="session")
def server(home: Path) -> Iterator[LocalInfo]:
    # FAMILIAR_HOME scopes the embedded server to ``home`` (without it, the server is the
    # user's own one, under ~/.local/state): set here, as the per-test fixture runs later
    before = os.environ.get("FAMILIAR_HOME")
    os.environ["FAMILIAR_HOME"] = str(home)
    started = time.monotonic()
    try:
        info = asyncio.run(LocalServer(home).ensure_running())
        print(f"\nllama-server ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield info
    finally:
        os.environ["FAMILIAR_HOME"] = str(home)
        asyncio.run(LocalServer(home).stop())
        if before is None:
            os.environ.pop("FAMILIAR_HOME", None)
        else:
            os.environ["FAMILIAR_HOME"] = before


async def _post(info: LocalInfo, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        response = await client.post(f"http://{info.address}{path}", json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


async def test_health_and_models(server: LocalInfo) -> None:
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        health = await client.get(f"http://{server.address}/health")
        models = await client.get(f"{server.base_url}/models")
    assert health.status_code == 200
    assert MODEL in [m["id"] for m in models.json()["data"]]
    assert server.seats == 4 and server.ctx_size == 4 * 8192


async def test_raw_completion(server: LocalInfo) -> None:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 16}
    result = await _post(server, "/v1/completions", {**body, "temperature": 0})
    assert isinstance(result["choices"][0]["text"], str)
    assert 0 < result["usage"]["completion_tokens"] <= 16


async def test_chat_with_openai_sdk(server: LocalInfo) -> None:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0) as ai:
        reply = await ai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name one colour."}],
            max_tokens=16,
            temperature=0,
        )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage is not None and reply.usage.completion_tokens > 0


async def test_json_schema_constrained_chat(server: LocalInfo) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0) as ai:
        reply = await ai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe a person as JSON."}],
            max_tokens=200,  # room for the whitespace the grammar allows; ~20 used
            temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    data = json.loads(reply.choices[0].message.content or "")
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and len(data["name"]) <= 12
    assert isinstance(data["age"], int) and 0 <= data["age"] <= 120


async def test_four_requests_use_four_seats(server: LocalInfo) -> None:
    """Four requests in flight at once are decoded together, one per seat (per /slots)."""
    busy_seen: list[int] = []
    done = asyncio.Event()

    async def watch_slots() -> None:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            while not done.is_set():
                slots = (await client.get(f"http://{server.address}/slots")).json()
                busy_seen.append(sum(1 for slot in slots if slot["is_processing"]))
                await asyncio.sleep(0.02)

    async def complete(i: int) -> dict[str, Any]:
        body = {"model": MODEL, "prompt": f"Story {i}: Once upon a time", "max_tokens": 40}
        return await _post(server, "/v1/completions", {**body, "ignore_eos": True})

    watcher = asyncio.create_task(watch_slots())
    started = time.monotonic()
    try:
        results = await asyncio.gather(*(complete(i) for i in range(4)))
    finally:
        done.set()
        await watcher
    wall = time.monotonic() - started
    tokens = sum(r["usage"]["completion_tokens"] for r in results)
    print(f"\n4 x 40 tokens in {wall:.2f} s: {tokens / wall:.0f} tokens/s", file=sys.stderr)
    assert tokens == 4 * 40
    assert max(busy_seen) == 4, f"seats busy at once: {busy_seen}"


async def test_reuse_then_stop(home: Path, server: LocalInfo) -> None:
    again = LocalServer(home)
    assert (await again.ensure_running()).pid == server.pid
    assert again.status() == server
    assert await again.stop() is True  # returns once the process is gone
    assert not local._alive(server.pid)
    assert not local._is_llama_server(server.pid)
    assert again.status() is None and not again.state_path.exists()
