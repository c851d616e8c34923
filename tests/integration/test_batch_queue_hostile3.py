"""Hostile round 3 on ``familiar batch --nats``: two submitters of the same file and the
same results file at once (each custom id must still be one line, nothing lost)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.integration.test_batch_queue import (
    batch_args,
    familiar,
    plain_requests,
    worker,
    workspace,
)
from tests.integration.test_queue import finish, stop
from tests.support import nats as nats_support
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.nats import NatsServer

nats_server = nats_support.nats_server  # the fixture


async def test_two_submitters_of_one_results_file_never_write_a_line_twice(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    n = 16
    async with FakeOpenAIServer(latency_s=1.0) as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=4)
        plain_requests(ws, n)
        w = await worker(ws, "w", nats_server.url)
        try:
            subs = await asyncio.gather(
                *(familiar(ws, f".home-s{i}", *batch_args(nats_server.url)) for i in (1, 2))
            )
            ends = await asyncio.gather(*(finish(s) for s in subs))
        finally:
            await stop(w)
        codes = sorted(code for code, _out, _err in ends)
        lines = [json.loads(x) for x in (ws / "out.jsonl").read_text().splitlines()]
        ids = [row["custom_id"] for row in lines]
        assert sorted(ids) == sorted(f"r{i}" for i in range(n)), "a line lost or written twice"
        assert codes == [0, 2]  # one did the batch; the other, started with it, refused
        refused = next(err for code, _o, err in ends if code == 2).strip().splitlines()
        assert len(refused) == 1 and "another familiar batch is writing" in refused[0]
        assert all("Traceback" not in err for _c, _o, err in ends)
