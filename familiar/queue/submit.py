"""``familiar translate --nats URL``: the batch as jobs on the queue, results collected.

The submitter reads one article at a time (memory holds job ids, not texts), and per
article:

* a result already stored under its job id (an earlier run, or an identical article) is
  collected at once: nothing is submitted;
* a stored failure (a failed or errored article, a poison job) is purged and the job
  submitted again with a fresh message id, so the duplicate window does not swallow the
  retry (a local batch retries failed articles too);
* anything else is published on ``familiar.queue.jobs.<job>`` with ``Nats-Msg-Id`` = job
  id: a job still queued from a killed run is not queued twice (the server answers
  "duplicate"). A duplicate that is not in the stream any more (acked, but its result was
  purged or lost since, or a run was killed between purging a failure and publishing
  again) is published again at once with a fresh id.

Then it collects: workers announce each stored result on ``familiar.queue.done.<job>``
(subscribed before the first lookup, so none is missed while connected), and every
``recheck_s`` and after each reconnect the results of the jobs still out are looked up
again (a notice lost in an outage costs a few seconds, not the batch). Every
``lost_check_s`` each job still out is looked for in the stream (waiting, or held by a
worker that has not acked it): one neither there nor stored is lost and submitted again.
No result at all for ``collect_timeout_s`` (no worker running, every worker stuck) ends
the collection: the articles still out are this batch's failures (exit 1), their jobs stay
queued and a rerun collects them. Outputs are written as a local batch writes them (same
paths, atomic), rows filled from the worker's report. Interrupted, the jobs stay queued; a
rerun collects what is done meanwhile.
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
        lost_check_s: float = 30.0,
        collect_timeout_s: float = 3600.0,
    ) -> None:
        self.store = store
        self.opts = opts
        self.job_opts = JobOptions.of(opts)
        self.telemetry = telemetry
        self.progress = progress or (lambda _what, _n: None)
        self.recheck_s = recheck_s
        self.lost_check_s = lost_check_s
        self.collect_timeout_s = collect_timeout_s
        self._out: dict[str, list[_Article]] = {}  # job id -> the articles waiting on it
        self._arrived: set[str] = set()
        self._wake = asyncio.Event()
        self.submitted = self.duplicates = self.collected_at_once = 0
        self.resubmitted = 0  # jobs found neither stored nor queued, published again
        self.timed_out = 0  # articles given up at collect_timeout_s

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
            self.progress("queued", len(self._out))
            log.info(
                "batch queued",
                url=self.store.where,
                submitted=self.submitted,
                duplicates=self.duplicates,
                resubmitted=self.resubmitted,
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
        again = False
        if found is not None:
            result, _revision = found
            if result.done and not self.opts.force:
                self.collected_at_once += 1
                await self._finish(job, result)
                return
            await self.store.forget(job)
            again = True
        await self._publish(job, article, text, again)
        self.progress("submitted", 1)

    async def _publish(self, job: str, article: _Article, text: str, again: bool) -> None:
        if self.store.fits(text):
            msg = JobMessage(job, str(article.rel), self.job_opts, text=text)
        else:  # over the payload limit: the text goes to the object store
            name = f"article.{job}"
            await self.store.put_text(name, text)
            msg = JobMessage(job, str(article.rel), self.job_opts, text_object=name)
        headers = {
            "Nats-Msg-Id": message_id(job, again),
            JOB: job,
            CORRELATION: correlation_id.get() or "",
        }
        data = msg.encode()
        js, subject = self.store.js, f"{SUBJECT}.{job}"
        ack = await self.store.call(lambda: js.publish(subject, data, headers=headers), "submit")
        if not ack.duplicate:
            self.submitted += 1
        elif not again and await self._lost(job):  # acked long ago, its result gone since
            self.resubmitted += 1
            await self._publish(job, article, text, True)
        else:
            self.duplicates += 1

    async def _lost(self, job: str) -> bool:
        """Neither in the stream nor stored: no worker will ever run it. (In that order: a
        worker stores the result before it acks, so a job gone from the stream has its
        result stored, unless it was lost.)"""
        return not await self.store.queued(job) and await self.store.result(job) is None

    async def _resubmit(self, job: str) -> None:
        """Publish a lost job again (its text read again from the first article's file)."""
        article = self._out[job][0]
        try:
            text = read_article(article.src)
        except ArticleError as exc:
            text, error = "", str(exc)
        else:
            error = "" if job_id(text, self.job_opts) == job else "changed during the batch"
        if error:
            for a in self._out.pop(job):
                a.report.status, a.report.error = "error", error
                self.progress("article", 1)
            return
        log.warning(
            "a job was neither stored nor queued (its result purged or lost?); submitting it again",
            job=job,
            article=str(article.rel),
        )
        self.resubmitted += 1
        await self._publish(job, article, text, True)

    async def _collect(self) -> None:
        """Until every job is in: look up those announced, and all of them every
        ``recheck_s`` and after a reconnect; every ``lost_check_s`` resubmit the lost
        ones; give up on the rest after ``collect_timeout_s`` without any result."""
        recheck = True  # once at the start: results stored while we were publishing
        clock = asyncio.get_running_loop().time
        progress_at = lost_at = clock()
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
                    progress_at = clock()
            if clock() - lost_at >= self.lost_check_s:
                lost_at = clock()
                for job in list(self._out):
                    if job in self._out and await self._lost(job):
                        await self._resubmit(job)
            if not self._out:
                return
            idle = clock() - progress_at
            if idle >= self.collect_timeout_s:
                self._give_up()
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
                    timeout=min(self.recheck_s, self.collect_timeout_s - idle),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()
                reconnect.cancel()
            recheck = reconnect in done or not done
            self.store.reconnected.clear()

    def _give_up(self) -> None:
        """``collect_timeout_s`` without a result: what is still out is this batch's
        failure; the jobs stay queued and a rerun collects them."""
        log.warning(
            f"no result for {self.collect_timeout_s:g} s (collect_timeout_s); "
            f"{sum(len(a) for a in self._out.values())} articles not collected: are workers "
            "running ('familiar worker --nats URL')? their jobs stay queued: rerun to "
            "collect them"
        )
        for job, articles in list(self._out.items()):
            for a in articles:
                a.report.status = "failed"
                a.report.error = (
                    f"no result within collect_timeout_s ({self.collect_timeout_s:g} s);"
                    " the job stays queued: rerun to collect it"
                )
                self.timed_out += 1
                self.progress("article", 1)
                self._emit(
                    "article.finished",
                    {"article": str(a.rel), "status": "failed", "job": job, "chunks": 0},
                )
        self._out.clear()

    async def _finish(self, job: str, result: JobResult) -> None:
        """Write the job's output for every article waiting on it; fill their rows."""
        articles = self._out.pop(job, [])
        altered = ""
        try:
            output = await self.store.output(result) if articles else None
        except ValueError as exc:  # altered on the bus: never written; asked again next run
            output, altered = None, str(exc)
            await self.store.forget(job)
        for a in articles:
            finish_article(a, job, result, output, altered, self.opts)
            self.progress("article", 1)
            self._emit("article.finished", finished_fields(a, job, result))


def finish_article(
    a: _Article, job: str, result: JobResult, output: str | None, altered: str, opts: BatchOptions
) -> None:
    """One article's row from its job's result, and its output written where a local
    batch writes it (atomic); an output altered on the bus is never written."""
    result.fill(a.report)
    if altered:
        a.report.status, a.report.error = "error", f"{altered}: rerun to ask again"
    elif output is not None:
        out = output_path(a.src, a.rel, to=opts.to, out_dir=opts.out_dir, in_place=opts.in_place)
        try:
            write_article(out, output)
            a.report.out = str(out)
        except ArticleError as exc:
            a.report.status, a.report.error = "error", str(exc)


def finished_fields(a: _Article, job: str, result: JobResult) -> dict[str, Any]:
    """The ``article.finished`` event of an article collected from the queue."""
    return {
        "article": str(a.rel),
        "status": a.report.status,
        "chunks": a.report.chunks,
        "from_cache": a.report.from_cache,
        "failed_chunks": len(a.report.failed_chunks),
        "duration_ms": round(a.report.seconds * 1000),
        "job": job,
        "worker": result.worker,
    }


async def submit_batch(
    url: str,
    home: Path,
    opts: BatchOptions,
    files: Sequence[tuple[Path, Path]],
    reports: list[ArticleReport],
    *,
    progress: Progress | None = None,
    wait_s: float = 60.0,
    collect_timeout_s: float = 3600.0,
) -> list[ArticleReport]:
    """The batch through the queue at ``url``: one correlation id, telemetry, the store."""
    from familiar.context import bound_correlation_id, new_correlation_id

    # the caller's batch id when it bound one (translate prints it in its report)
    with bound_correlation_id(correlation_id.get() or new_correlation_id()):
        telemetry = Telemetry(home)
        async with telemetry, QueueStore(url, wait_s=wait_s, name="familiar submit") as store:
            submitter = Submitter(
                store,
                opts,
                telemetry=telemetry,
                progress=progress,
                collect_timeout_s=collect_timeout_s,
            )
            return await submitter.run(files, reports)
