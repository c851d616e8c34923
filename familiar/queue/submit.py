"""``familiar translate --nats URL``: the batch as jobs on the queue, results collected.

The submitter reads one article at a time (memory holds job ids, not texts), and per
article:

* a result already stored under its job id (an earlier run, or an identical article) is
  collected at once: nothing is submitted;
* a stored failure (a failed or errored article, a poison job) is purged and the job
  submitted again, with that result's revision in its message id, so the duplicate
  window does not swallow the retry (a local batch retries failed articles too);
* anything else is published with ``Nats-Msg-Id`` = job id: a job still queued from a
  killed run is not queued twice (the server answers "duplicate").

Then it collects: workers announce each stored result on ``familiar.queue.done.<job>``
(subscribed before the first lookup, so none is missed while connected), and every
``recheck_s`` and after each reconnect the results of the jobs still out are looked up
again (a notice lost in an outage costs a few seconds, not the batch). Outputs are
written as a local batch writes them (same paths, atomic), rows filled from the worker's
report. Interrupted, the jobs stay queued; a rerun collects what is done meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from nats.aio.msg import Msg

from familiar.context import correlation_id
from familiar.errors import ArticleError
from familiar.queue.jobs import JobMessage, JobOptions, JobResult, job_id, message_id
from familiar.queue.store import CORRELATION, DONE, JOB, SUBJECT, QueueStore
from familiar.telemetry import Telemetry
from familiar.translate.chunks import BatchOptions
from familiar.translate.files import output_path, read_article, write_article
from familiar.translate.report import ArticleReport

log = structlog.get_logger("familiar.queue")

Progress = Callable[[str, int], None]


@dataclass
class _Article:
    src: Path
    rel: Path
    report: ArticleReport


class Submitter:
    """Submits a batch's articles as jobs and collects their results."""

    def __init__(
        self,
        store: QueueStore,
        opts: BatchOptions,
        *,
        telemetry: Telemetry | None = None,
        progress: Progress | None = None,
        recheck_s: float = 5.0,
    ) -> None:
        self.store = store
        self.opts = opts
        self.job_opts = JobOptions.of(opts)
        self.telemetry = telemetry
        self.progress = progress or (lambda _what, _n: None)
        self.recheck_s = recheck_s
        self._out: dict[str, list[_Article]] = {}  # job id -> the articles waiting on it
        self._arrived: set[str] = set()
        self._wake = asyncio.Event()
        self.submitted = self.duplicates = self.collected_at_once = 0

    def _emit(self, name: str, fields: Mapping[str, Any]) -> None:
        if self.telemetry is not None:
            self.telemetry.emit(name, fields)

    async def run(
        self, files: Sequence[tuple[Path, Path]], reports: list[ArticleReport]
    ) -> list[ArticleReport]:
        self._emit(
            "batch.start",
            {"articles": len(files), "to": self.opts.to, "format": self.opts.fmt, "queue": True},
        )
        started, status = time.monotonic(), "failed"
        sub = await self.store.call(
            lambda: self.store.nc.subscribe(f"{DONE}.*", cb=self._on_done), "subscribe"
        )
        try:
            for (src, rel), report in zip(files, reports, strict=True):
                await self._submit(_Article(src, rel, report))
            log.info(
                "batch queued",
                url=self.store.where,
                submitted=self.submitted,
                duplicates=self.duplicates,
                done_already=self.collected_at_once,
            )
            await self._collect()
            status = "ok" if all(r.status in ("ok", "skipped") for r in reports) else "failed"
        except asyncio.CancelledError:
            status = "interrupted"
            raise
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            for r in reports:
                if r.status == "pending":
                    r.status = "interrupted"
            self._emit(
                "batch.end",
                {
                    "status": status,
                    "articles": len(reports),
                    "failed": sum(r.status in ("failed", "error") for r in reports),
                    "interrupted": sum(r.status == "interrupted" for r in reports),
                    "duration_ms": round((time.monotonic() - started) * 1000),
                    "queue": True,
                },
            )
        return reports

    async def _on_done(self, msg: Msg) -> None:
        job = msg.subject.rsplit(".", 1)[-1]
        if job in self._out:
            self._arrived.add(job)
            self._wake.set()

    async def _submit(self, article: _Article) -> None:
        try:
            text = read_article(article.src)
        except ArticleError as exc:
            article.report.status, article.report.error = "error", str(exc)
            self.progress("article", 1)
            return
        job = job_id(text, self.job_opts)
        waiting = self._out.get(job)
        if waiting is not None:  # an identical article of this batch: one job for both
            waiting.append(article)
            return
        self._out[job] = [article]
        found = await self.store.result(job)
        retry_of: int | None = None
        if found is not None:
            result, revision = found
            if result.done and not self.opts.force:
                self.collected_at_once += 1
                await self._finish(job, result)
                return
            await self.store.forget(job)
            retry_of = revision
        await self._publish(job, article, text, retry_of)

    async def _publish(self, job: str, article: _Article, text: str, retry_of: int | None) -> None:
        if self.store.fits(text):
            msg = JobMessage(job, str(article.rel), self.job_opts, text=text)
        else:  # over the payload limit: the text goes to the object store
            name = f"article.{job}"
            await self.store.put_text(name, text)
            msg = JobMessage(job, str(article.rel), self.job_opts, text_object=name)
        headers = {
            "Nats-Msg-Id": message_id(job, retry_of),
            JOB: job,
            CORRELATION: correlation_id.get() or "",
        }
        data = msg.encode()
        js = self.store.js
        ack = await self.store.call(lambda: js.publish(SUBJECT, data, headers=headers), "submit")
        if ack.duplicate:
            self.duplicates += 1
        else:
            self.submitted += 1

    async def _collect(self) -> None:
        """Until every job is in: look up those announced, and all of them every
        ``recheck_s`` and after a reconnect."""
        recheck = True  # once at the start: results stored while we were publishing
        while self._out:
            if recheck:
                jobs = list(self._out)
            else:
                jobs = [j for j in self._arrived if j in self._out]
            self._arrived.clear()
            for job in jobs:
                found = await self.store.result(job)
                if found is not None:
                    await self._finish(job, found[0])
            if not self._out:
                return
            self._wake.clear()
            if self._arrived:
                recheck = False
                continue
            waiter = asyncio.ensure_future(self._wake.wait())
            reconnect = asyncio.ensure_future(self.store.reconnected.wait())
            try:
                done, _ = await asyncio.wait(
                    (waiter, reconnect),
                    timeout=self.recheck_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()
                reconnect.cancel()
            recheck = reconnect in done or not done
            self.store.reconnected.clear()

    async def _finish(self, job: str, result: JobResult) -> None:
        """Write the job's output for every article waiting on it; fill their rows."""
        articles = self._out.pop(job, [])
        output = await self.store.output(result) if articles else None
        for a in articles:
            result.fill(a.report)
            if output is not None:
                out = output_path(
                    a.src,
                    a.rel,
                    to=self.opts.to,
                    out_dir=self.opts.out_dir,
                    in_place=self.opts.in_place,
                )
                try:
                    write_article(out, output)
                    a.report.out = str(out)
                except ArticleError as exc:
                    a.report.status, a.report.error = "error", str(exc)
            self.progress("article", 1)
            self._emit(
                "article.finished",
                {
                    "article": str(a.rel),
                    "status": a.report.status,
                    "chunks": a.report.chunks,
                    "from_cache": a.report.from_cache,
                    "failed_chunks": len(a.report.failed_chunks),
                    "duration_ms": round(a.report.seconds * 1000),
                    "job": job,
                    "worker": result.worker,
                },
            )


async def submit_batch(
    url: str,
    home: Path,
    opts: BatchOptions,
    files: Sequence[tuple[Path, Path]],
    reports: list[ArticleReport],
    *,
    progress: Progress | None = None,
    wait_s: float = 60.0,
) -> list[ArticleReport]:
    """The batch through the queue at ``url``: one correlation id, telemetry, the store."""
    from familiar.context import bound_correlation_id, new_correlation_id

    with bound_correlation_id(new_correlation_id()):
        telemetry = Telemetry(home)
        async with telemetry, QueueStore(url, wait_s=wait_s, name="familiar submit") as store:
            submitter = Submitter(store, opts, telemetry=telemetry, progress=progress)
            return await submitter.run(files, reports)
