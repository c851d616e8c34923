"""Progress across hosts (issue 27 item 4): ``familiar worker`` says ready and one line
per job at the default level; the ``--nats`` submitter says what it submitted and one
line per collected article."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.test_queue import finish, nats_server, sources, stop, submit, worker
from tests.integration.test_queue import workspace as queue_workspace
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.nats import NatsServer
from tests.support.scripts import report_rows

__all__ = ["nats_server"]


async def test_worker_and_submitter_lines(tmp_path: Path, nats_server: NatsServer) -> None:
    async with FakeOpenAIServer(latency_s=0.02, reply_mode="identity") as srv:
        ws = queue_workspace(tmp_path / "ws", srv.url)
        sources(ws, 3)
        w = await worker(ws, "w", nats_server.url)
        try:
            code, out, err = await finish(await submit(ws, nats_server.url))
            assert code == 0, err
        finally:
            wcode, werr = await stop(w)
    assert wcode == 143, werr
    rows = report_rows(out)
    assert {r["status"] for r in rows} == {"ok"}
    wlines = werr.splitlines()
    assert any(
        re.match(r"familiar: worker ready on nats://.*: \d+ jobs at once", ln) for ln in wlines
    ), werr
    jobs = [ln for ln in wlines if re.match(r"familiar: job \S+\.md: done \(\d+\.\d s\)$", ln)]
    assert len(jobs) == 3, werr
    assert "familiar: translate: jobs submitted: 3 (3 to collect, 0 of 3 articles done" in err
    done = [ln for ln in err.splitlines() if re.match(r"familiar: translate: \[\d/3\] ok ", ln)]
    assert len(done) == 3, err
