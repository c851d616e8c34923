"""Plain progress lines (no terminal) and long log lines folded with their details kept."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from familiar import logs
from familiar.progress import PlainProgress
from familiar.queue.worker import _job_line
from familiar.translate.report import ArticleReport


@pytest.fixture(autouse=True)
def keep_logging_config() -> Iterator[None]:
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
    logs.set_details_log(None)


async def test_one_line_per_article_chunk_lines_and_heartbeats() -> None:
    reports = [ArticleReport(path=f"a{i}.md") for i in range(3)]
    out = io.StringIO()
    with PlainProgress(reports, stream=out, heartbeat_s=0.05) as progress:
        progress("chunks-total", 120)
        for _ in range(60):
            progress("chunk", 1)
            progress("tokens", 10)
        reports[1].status, reports[1].chunks, reports[1].seconds = "ok", 60, 1.25
        progress("article", 1)
        reports[0].status, reports[0].error = "failed", "HTTP 500\n" + "x" * 300
        reports[0].failed_chunks = [3]
        progress("article", 1)
        progress("article", 0)  # nothing new: no line
        await asyncio.sleep(0.12)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("familiar: translate: chunks 50/120 done (")
    assert lines[1] == "familiar: translate: [1/3] ok a1.md (60 chunks, 1.2 s)"
    assert lines[2].startswith("familiar: translate: [2/3] failed a0.md (0 chunks, 1 failed,")
    assert lines[2].endswith("…") and len(lines[2]) < 200  # the whole error: in the report
    beats = lines[3:]
    assert len(beats) >= 1
    assert all("articles 2/3 done, chunks 60/120 (" in b and "tok/s" in b for b in beats)


async def test_nats_submitter_lines() -> None:
    reports = [ArticleReport(path=f"a{i}.md") for i in range(2)]
    out = io.StringIO()
    with PlainProgress(reports, stream=out, heartbeat_s=60) as progress:
        progress("submitted", 1)
        progress("submitted", 1)
        progress("queued", 2)
        assert "jobs submitted 2, collected 0; articles 0/2 done" in progress.heartbeat_line()
    assert out.getvalue().splitlines() == [
        "familiar: translate: jobs submitted: 2 (2 to collect, 0 of 2 articles done"
        " already); collecting ..."
    ]


def test_worker_job_lines() -> None:
    assert _job_line("a.md", "ok", 1, 2.04, None) == "job a.md: done (2.0 s)"
    line = _job_line("b.md", "failed", 3, 1.0, "boom " * 100)
    assert line.startswith("job b.md: failed (1.0 s, delivery 3: redelivered): boom boom")
    assert line.endswith("…") and len(line) < 200
    assert "handed back" in _job_line("c.md", "interrupted", 1, 0.5, None)


def test_a_long_log_line_is_folded_and_kept_whole_in_the_details_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import structlog

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setenv("NO_COLOR", "1")
    logs.configure("warning")
    details = tmp_path / "logs" / "details.jsonl"
    logs.set_details_log(details)
    problems = ["placeholder ⟦P3⟧ missing in: " + "words " * 300]
    structlog.get_logger("t").warning("chunk failed; source kept", chunk=7, problems=problems)
    structlog.get_logger("t").warning("short", slot="s")
    first, second = err.getvalue().splitlines()
    assert "chunk failed; source kept" in first and f"details={details}" in first
    assert len(first) < 400 and "chunk=7" in first
    assert "short" in second and "details" not in second
    (record,) = [json.loads(line) for line in details.read_text().splitlines()]
    assert record["problems"] == problems and record["chunk"] == 7


def test_without_a_details_log_nothing_is_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    import structlog

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    logs.configure("warning")
    logs.set_details_log(None)
    structlog.get_logger("t").warning("long", text="w" * 1000)
    assert "w" * 1000 in err.getvalue()
