"""``familiar worker``: jobs from the queue, through this host's fleet, results stored.

Every worker binds the one durable pull consumer ``familiar_workers`` of the work-queue
stream (a WorkQueue stream allows a single unfiltered consumer, so workers share it; the
server hands each job to one of them). The worker creates or updates it on start (its
``ack_wait`` and ``max_deliver``: the last worker started sets them)::

    ack_policy explicit, ack_wait 30 s, max_deliver 4, deliver all

A worker runs up to ``jobs_at_once`` jobs (twice its translator seats, at least 4, as a
local batch runs articles; at least an eighth of all its seats, for request groups of a few
dozen requests), fetching one job whenever one of them is free, so nothing waits in its
memory while its ack clock runs. For each job:

1. a job whose result is already stored (a duplicate) is acked at once;
2. on its ``max_deliver``-th delivery it is not run again: every worker that took it
   stopped or died before it finished (a poison job), so a failure is stored for it;
3. otherwise the article goes through :meth:`Translator.translate_text` on this host's
   seats (``kind="batch"``), with ``in_progress`` sent every third of ``ack_wait``;
   chunks come from and go to the shared KV chunk cache (``kvcache.py``); a request
   group of ``familiar batch --nats`` (``groups.py``) runs on ``grouprun.GroupRunner``
   instead, its result the group's result lines;
4. the result is stored (``familiar_results``, key = job id), announced, then acked.

Stopping (SIGINT/SIGTERM): every running job is cancelled and **nak**ed, so another
worker takes it at once (its finished chunks are in the KV cache); a SIGKILLed worker's
jobs come back after ``ack_wait``. The worker's events carry the batch's correlation id
(the job's ``Familiar-Correlation-Id`` header).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.js import api

from familiar.context import bound_correlation_id, new_correlation_id
from familiar.dispatch import Pool
from familiar.errors import LedgerUnavailable, QueueUnavailable
from familiar.ledger.nats_connect import TRANSIENT
from familiar.queue.grouprun import GroupRunner
from familiar.queue.groups import RequestGroup, decode_job
from familiar.queue.jobs import AlteredJob, JobMessage, JobResult, job_id
from familiar.queue.kvcache import KvChunkCache
from familiar.queue.store import CONSUMER, CORRELATION, STREAM, QueueStore
from familiar.telemetry import Telemetry
from familiar.translate.batch import Translator
from familiar.translate.report import ArticleReport

log = structlog.get_logger("familiar.queue")


@dataclass(frozen=True)
class WorkerSettings:
    ack_wait_s: float = 30.0
    max_deliver: int = 4
    jobs_at_once: int | None = None  # default: 2 x seats, at least 4
    fetch_wait_s: float = 2.0  # how long one fetch waits for a job


def _check_cancelled() -> None:
    """Raise ``CancelledError`` if this task was asked to stop. On Python 3.11 a
    cancellation that arrives as an inner ``asyncio.wait_for`` (nats-py's fetch) completes
    is lost; a loop around it would run on for good (a worker that ignored SIGTERM for 13
    minutes while its server was away)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Worker:
    """Takes jobs off the queue and runs them on ``pools`` until cancelled."""

    def __init__(
        self,
        store: QueueStore,
        pools: Sequence[Pool],
        cache: KvChunkCache,
        *,
        settings: WorkerSettings | None = None,
        telemetry: Telemetry | None = None,
        announce: Callable[[str], None] | None = None,
        groups: GroupRunner | None = None,
    ) -> None:
        #: one line for a person: ready, then one per job (``familiar worker`` prints them)
        self.announce = announce or (lambda _line: None)
        self.store = store
        self.pools = list(pools)
        self.cache = cache
        self.settings = settings or WorkerSettings()
        self.telemetry = telemetry
        #: runs request groups (``familiar batch --nats``); None: they fail on this worker
        self.groups = groups
        seats = sum(p.seats for p in self.pools)
        spread = -(-groups.seats // 8) if groups is not None else 0  # groups of a few dozen
        self.jobs_at_once = self.settings.jobs_at_once or max(4, 2 * seats, spread)
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.max_deliver = self.settings.max_deliver
        self.ack_wait_s = self.settings.ack_wait_s
        self.done = 0  # jobs acked by this worker

    def _emit(self, name: str, fields: Mapping[str, Any]) -> None:
        if self.telemetry is not None:
            self.telemetry.emit(name, fields)

    async def consumer(self) -> api.ConsumerInfo:
        """Create or update the shared consumer; its settings as the server has them."""
        config = api.ConsumerConfig(
            name=CONSUMER,
            durable_name=CONSUMER,
            description="familiar workers (see familiar/queue/worker.py)",
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.settings.ack_wait_s,
            max_deliver=self.settings.max_deliver,
            max_ack_pending=10_000,
        )
        js = self.store.js
        info = await self.store.call(lambda: js.add_consumer(STREAM, config), "the consumer")
        self.max_deliver = int(info.config.max_deliver or self.settings.max_deliver)
        self.ack_wait_s = float(info.config.ack_wait or self.settings.ack_wait_s)
        return info

    async def run(self) -> None:
        """Fetch and run jobs until cancelled (a server away is waited for, for good)."""
        await self.consumer()
        js = self.store.js
        psub = await self.store.call(
            lambda: js.pull_subscribe_bind(durable=CONSUMER, stream=STREAM), "subscribe"
        )
        log.info(
            "worker ready",
            url=self.store.where,
            jobs_at_once=self.jobs_at_once,
            ack_wait_s=self.ack_wait_s,
            max_deliver=self.max_deliver,
        )
        self.announce(
            f"worker ready on {self.store.where}: {self.jobs_at_once} jobs at once,"
            f" ack wait {self.ack_wait_s:g} s, max deliver {self.max_deliver}"
        )
        free = asyncio.Semaphore(self.jobs_at_once)
        async with asyncio.TaskGroup() as tg:
            try:
                while True:
                    _check_cancelled()
                    await free.acquire()
                    try:
                        msgs = await psub.fetch(1, timeout=self.settings.fetch_wait_s)
                        _check_cancelled()  # a cancel that the fetch's wait_for swallowed
                    except TRANSIENT as exc:
                        free.release()
                        if not isinstance(exc, TimeoutError):
                            self.store.warn(str(exc) or type(exc).__name__)
                            await asyncio.sleep(0.5)
                        continue
                    if not msgs:
                        free.release()
                        continue
                    for msg in msgs:
                        tg.create_task(self._guarded(msg, free))
            finally:  # stopping: no more pulls before the running jobs are handed back
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(psub.unsubscribe(), 2)

    async def _guarded(self, msg: Msg, free: asyncio.Semaphore) -> None:
        try:
            headers = msg.headers or {}
            with bound_correlation_id(headers.get(CORRELATION) or new_correlation_id()):
                await self._job(msg)
        finally:
            free.release()

    async def _job(self, msg: Msg) -> None:
        deliveries = int(msg.metadata.num_delivered or 1)
        try:
            job = decode_job(msg.data)
        except ValueError as exc:
            log.error("not a job; dropped", error=str(exc))
            with contextlib.suppress(*TRANSIENT):
                await msg.term()
            return
        t0 = time.monotonic()
        status = "interrupted"
        error: str | None = None
        try:
            result = await self._result(msg, job, deliveries)
            if result is not None:
                await self.store.put_result(job.job, result)
                status = result.status
                error = result.report.get("error")
            else:
                status = "duplicate"
            await msg.ack_sync(timeout=self.store.op_timeout)
            self.done += 1
        except asyncio.CancelledError:  # stopping: another worker takes it now
            with contextlib.suppress(Exception):  # after our last pull request expired
                await asyncio.wait_for(msg.nak(delay=self.settings.fetch_wait_s + 1), 2)
            log.info("job handed back", job=job.job, deliveries=deliveries)
            raise
        except AlteredJob:  # not the job its id names: dropped, the real one still runs
            status = "altered"
            log.warning("a job whose text does not match its id (altered on the bus?); dropped")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(msg.term(), 2)
        except (LedgerUnavailable, QueueUnavailable) as exc:  # ours, not the job's
            status = "unavailable"
            log.warning("job left for later", job=job.job, error=str(exc))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(msg.nak(delay=self.ack_wait_s), 2)
        except TRANSIENT as exc:  # the ack got lost: the result is stored, a redelivery
            log.info("ack failed; the job will come back as a duplicate", error=repr(exc))
        except Exception as exc:  # the server refused something: try again later
            status = "error"
            log.error("job left for later", job=job.job, error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(msg.nak(delay=self.ack_wait_s), 2)
        finally:
            took = time.monotonic() - t0
            self.announce(_job_line(job.rel, status, deliveries, took, error))
            self._emit(
                "queue.job",
                {
                    "job": job.job,
                    "article": job.rel,
                    "kind": "requests" if isinstance(job, RequestGroup) else "article",
                    "status": status,
                    "deliveries": deliveries,
                    "worker": self.identity,
                    "duration_ms": round((time.monotonic() - t0) * 1000),
                },
            )

    async def _result(
        self, msg: Msg, job: JobMessage | RequestGroup, deliveries: int
    ) -> JobResult | None:
        """The job's result; None when one is stored already."""
        found = await self.store.result(job.job)
        if found is not None and found[0].done:
            return None
        if deliveries >= self.max_deliver:
            log.warning("poison job: failed for good", job=job.job, deliveries=deliveries)
            what = "group of requests" if isinstance(job, RequestGroup) else "article"
            return JobResult.failure(
                f"gave up after {deliveries - 1} deliveries: every worker that took this"
                f" {what} stopped or died before finishing it (max_deliver"
                f" {self.max_deliver})",
                worker=self.identity,
                deliveries=deliveries,
            )
        async with asyncio.TaskGroup() as tg:
            beat = tg.create_task(self._heartbeat(msg))
            if isinstance(job, RequestGroup):
                outcome = await self._requests(job, deliveries)
            else:
                outcome = await self._translate(job, deliveries)
            beat.cancel()
        if isinstance(outcome, Exception):  # raised outside the group: not wrapped in one
            raise outcome
        return outcome

    async def _requests(self, job: RequestGroup, deliveries: int) -> JobResult | Exception:
        if self.groups is None:
            why = "this worker runs no batch requests"
            return JobResult.failure(why, status="error", worker=self.identity)
        return await self.groups.result(self.store, job, self.identity, deliveries)

    async def _heartbeat(self, msg: Msg) -> None:
        """``in_progress`` every third of ``ack_wait``: a long job keeps its message."""
        while True:
            await asyncio.sleep(max(0.2, self.ack_wait_s / 3))
            with contextlib.suppress(*TRANSIENT):
                await msg.in_progress()

    async def _translate(
        self, job: JobMessage, deliveries: int
    ) -> JobResult | LedgerUnavailable | QueueUnavailable | AlteredJob:
        """The result, or the outage that kept the job from running (to raise)."""
        try:
            text = job.text
            if text is None:
                assert job.text_object is not None
                text = await self.store.get_text(job.text_object)
        except QueueUnavailable as exc:
            return exc
        except Exception as exc:  # the object is gone (expired, purged)
            return JobResult.failure(
                f"the article's text {job.text_object} cannot be read from the queue: {exc}",
                status="error",
                worker=self.identity,
                deliveries=deliveries,
            )
        if job_id(text, job.options) != job.job:  # the id is the hash of text and options
            return AlteredJob(job.job)
        translator = Translator(
            self.pools, job.options.batch_options(), self.cache, telemetry=self.telemetry
        )
        report = ArticleReport(path=job.rel)
        try:
            output = await translator.translate_text(text, Path(job.rel), report)
        except (LedgerUnavailable, QueueUnavailable) as exc:
            return exc
        except Exception as exc:  # a bug: this article's error, the worker goes on
            log.error("job failed", job=job.job, error=f"{type(exc).__name__}: {exc}")
            report.status = "error"
            report.error = f"internal error: {type(exc).__name__}: {exc}"
            output = None
        return JobResult.of(report, output, worker=self.identity, deliveries=deliveries)


#: what a job's status means to a person reading ``familiar worker``'s lines
_SAID = {
    "ok": "done",
    "partial": "done, with error lines",
    "duplicate": "done already (a redelivered job whose result is stored)",
    "interrupted": "handed back (stopping): another worker takes it",
    "altered": "dropped: its text does not match its id",
    "unavailable": "left for later: the queue or the ledger is away",
    "error": "left for later: the server refused something",
}


def _job_line(article: str, status: str, deliveries: int, took: float, error: str | None) -> str:
    said = _SAID.get(status, status)
    again = f", delivery {deliveries}: redelivered" if deliveries > 1 else ""
    why = ""
    if error:
        first = " ".join(str(error).split())
        why = f": {first[:119]}…" if len(first) > 120 else f": {first}"
    return f"job {article}: {said} ({took:.1f} s{again}){why}"
