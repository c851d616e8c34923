"""What one ``ask`` through ``familiar mcp`` costs against the CLI's own client.

A fake server (own process, no latency) answers; the same prompt is asked N times
three ways, one call after another: SlotClient directly (what the CLI uses), the MCP
``ask`` tool through the SDK's stdio client (a ``familiar mcp`` subprocess), and a
whole ``familiar`` CLI process per call is left out (it is dominated by start-up).
Prints ms per call and the ratio.

    python benchmarks/mcp_overhead.py [--calls 50] [--tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import _common  # puts the repo on sys.path

from familiar.client.backend import SlotClient
from familiar.config.slots import Slot
from tests.support.fake_openai import spawn_fake_server

MSG = [{"role": "user", "content": "hello"}]


async def direct(url: str, calls: int) -> float:
    async with SlotClient(Slot(name="naughty", url=url, model="m", parallel=4)) as client:
        await client.chat(MSG)  # warm
        t0 = time.perf_counter()
        for _ in range(calls):
            await client.chat(MSG)
        return (time.perf_counter() - t0) / calls


async def through_mcp(url: str, calls: int, ws: Path) -> float:
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    (ws / "slots.toml").write_text(
        f'[slots.naughty]\nurl = "{url}"\nmodel = "m"\nruntime = "vllm"\nparallel = 4\n'
    )
    (ws / "CLAUDE.md").write_text("familiar: naughty\n")
    env = {**os.environ, "PYTHONPATH": str(_common.REPO), "FAMILIAR_TELEMETRY": "off"}
    env["FAMILIAR_HOME"] = str(ws / "home")
    env["FAMILIAR_LEDGER_DIR"] = str(ws / "ledger")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "familiar", "mcp", "--workspace", str(ws)], env=env
    )
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230
        async with stdio_client(params, errlog=errlog) as streams, ClientSession(*streams) as s:
            await s.initialize()
            await s.call_tool("ask", {"prompt": "hello"})  # warm
            t0 = time.perf_counter()
            for _ in range(calls):
                result = await s.call_tool("ask", {"prompt": "hello"})
                assert not result.is_error, result.content
            return (time.perf_counter() - t0) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--tiny", action="store_true", help="a smoke run (3 calls)")
    args = ap.parse_args()
    calls = 3 if args.tiny else args.calls
    with spawn_fake_server() as srv, tempfile.TemporaryDirectory() as tmp:
        d = asyncio.run(direct(srv.url, calls))
        m = asyncio.run(through_mcp(srv.url, calls, Path(tmp)))
    rows = [["SlotClient (the CLI's client)", d * 1000, 1.0], ["MCP ask (stdio)", m * 1000, m / d]]
    print(_common.table(["one call, sequential", "ms per call", "x direct"], rows))


if __name__ == "__main__":
    main()
