"""The queue's pure parts: job ids, message ids, the JSON of jobs and results."""

from __future__ import annotations

import json

import pytest

from familiar.queue.jobs import REPORT_FIELDS, JobMessage, JobOptions, JobResult, job_id, message_id
from familiar.translate.chunks import BatchOptions
from familiar.translate.report import ArticleReport

TEXT = "# 緑茶\n\nお湯を沸かします。\n"


def test_a_job_id_is_stable_and_shaped_by_everything_that_shapes_the_output() -> None:
    base = JobOptions(to="en", fmt="chat", chunk_tokens=700, glossary={"緑茶": "green tea"})
    same = JobOptions(to="en", fmt="chat", chunk_tokens=700, glossary={"緑茶": "green tea"})
    assert job_id(TEXT, base) == job_id(TEXT, same)
    assert len(job_id(TEXT, base)) == 40
    others = [
        JobOptions(to="ja", fmt="chat", chunk_tokens=700, glossary={"緑茶": "green tea"}),
        JobOptions(to="en", fmt="plamo", chunk_tokens=700, glossary={"緑茶": "green tea"}),
        JobOptions(to="en", fmt="chat", chunk_tokens=300, glossary={"緑茶": "green tea"}),
        JobOptions(to="en", fmt="chat", chunk_tokens=700, glossary={"緑茶": "sencha"}),
        JobOptions(to="en", source_lang="ja", fmt="chat", glossary={"緑茶": "green tea"}),
    ]
    ids = {job_id(TEXT, o) for o in others} | {job_id(TEXT + " ", base)}
    assert job_id(TEXT, base) not in ids and len(ids) == len(others) + 1
    # --force asks again but is the same job (the rerun finds its result)
    forced = JobOptions(
        to="en", fmt="chat", chunk_tokens=700, glossary={"緑茶": "green tea"}, force=True
    )
    assert job_id(TEXT, forced) == job_id(TEXT, base)


def test_message_ids_of_a_retry_differ_from_the_first_submission() -> None:
    assert message_id("abc") == "abc"
    assert message_id("abc", True) != message_id("abc", True) != "abc"


def test_options_round_trip_through_batch_options() -> None:
    opts = BatchOptions(
        to="ja", source_lang="en", fmt="fewshot", chunk_tokens=123, glossary={"a": "b"}
    )
    back = JobOptions.of(opts).batch_options()
    assert (back.to, back.source_lang, back.fmt, back.chunk_tokens) == ("ja", "en", "fewshot", 123)
    assert dict(back.glossary) == {"a": "b"} and back.out_dir is None


def test_a_job_message_round_trips_and_rejects_what_is_not_one() -> None:
    opts = JobOptions(to="en")
    msg = JobMessage("j1", "deep/a.md", opts, text=TEXT)
    assert JobMessage.decode(msg.encode()) == msg
    big = JobMessage("j1", "a.md", opts, text_object="article.j1")
    assert JobMessage.decode(big.encode()) == big
    for bad in (
        b"not json",
        b"[]",
        json.dumps({"format": 99}).encode(),
        json.dumps({"format": 1, "job": "j"}).encode(),
        JobMessage("j", "a", opts).encode(),  # neither text nor object
        JobMessage("j", "a", opts, text="x", text_object="o").encode(),  # both
    ):
        with pytest.raises(ValueError):
            JobMessage.decode(bad)


def test_a_result_carries_the_workers_report_fields_and_fills_the_submitters_row() -> None:
    report = ArticleReport(path="/worker/a.md", out="/nowhere", status="failed", chunks=5)
    report.from_cache, report.failed_chunks, report.tokens = 2, [3], 99
    result = JobResult.of(report, "out text", worker="h:1", deliveries=2)
    assert "path" not in result.report and "out" not in result.report
    assert set(result.report) == set(REPORT_FIELDS)
    back = JobResult.decode(result.encode())
    assert back == result and not back.done and back.status == "failed"
    row = ArticleReport(path="/submitter/a.md")
    back.fill(row)
    assert (row.path, row.out, row.status, row.chunks, row.from_cache) == (
        "/submitter/a.md",
        None,
        "failed",
        5,
        2,
    )
    assert row.failed_chunks == [3] and row.tokens == 99
    ok = JobResult.of(ArticleReport(path="", status="ok"), "x")
    skipped = JobResult.of(ArticleReport(path="", status="skipped"), None)
    assert ok.done and skipped.done
    poison = JobResult.failure("gave up", deliveries=4)
    assert (
        poison.status == "failed" and poison.output is None and poison.report["error"] == "gave up"
    )
    with pytest.raises(ValueError):
        JobResult.decode(b'{"format": 1}')
