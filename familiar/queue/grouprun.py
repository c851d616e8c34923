"""A queue worker's request groups (``familiar batch --nats``), run by the local batch's
own code: ``batch.router`` picks each request's slot (``--role``/``--slot`` of the batch,
else its ``body.model``) in this worker's configuration, ``batch.run.BatchRun`` asks it
on this host's fleet (``kind="batch"`` seats), with the finished-answer and JSON-schema
checks, and writes its result line. A request whose slot this worker does not serve is
that request's ``model_not_found`` error line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from familiar.batch import router
from familiar.batch.lines import Request
from familiar.batch.run import BatchRun, Counts, KeptLines
from familiar.context import correlation_id
from familiar.errors import ConfigError, LedgerUnavailable, QueueUnavailable
from familiar.queue.groups import RequestGroup, group_id, split_text
from familiar.queue.jobs import AlteredJob, JobResult

if TYPE_CHECKING:
    from familiar.client.backend import SlotClient
    from familiar.config.workspace import Config
    from familiar.queue.store import QueueStore

log = structlog.get_logger("familiar.queue")


class GroupRunner:
    """Runs request groups on ``clients`` (this worker's fleet, by slot name)."""

    def __init__(self, cfg: Config, clients: Mapping[str, SlotClient], seats: int) -> None:
        self.cfg = cfg
        self.clients = clients
        #: the seats of every deployment the clients use (sizes the worker's jobs at once)
        self.seats = seats

    def _route(self, group: RequestGroup) -> Callable[[Request], str]:
        try:
            _slots, route = router(self.cfg, group.options.role, group.options.slot)
        except ConfigError as exc:  # --role/--slot unknown here: every request's error
            problem = exc

            def refuse(_req: Request) -> str:
                raise ConfigError(f"on this worker: {problem}")

            return refuse
        served = self.clients

        def on_this_worker(req: Request) -> str:
            name = route(req)
            if name not in served:
                raise ConfigError(
                    f"slot {name!r} is not served by this worker (it opens the active roles' slots)"
                )
            return name

        return on_this_worker

    async def run(self, group: RequestGroup, text: str) -> tuple[dict[str, Any], str]:
        """The group's report fields and its result lines (one per request, each ending
        in a newline, in finishing order); ``ValueError`` when text and line numbers
        disagree."""
        lines = split_text(text)
        if len(lines) != len(group.lines):
            raise ValueError(f"{len(lines)} lines for {len(group.lines)} line numbers")
        kept = KeptLines()
        counts = Counts(total=len(lines))
        run = BatchRun(self.clients, self._route(group), kept, correlation_id.get() or "", counts)
        await run.run_lines(zip(group.lines, lines, strict=True), set(), len(lines))
        # "partial": run, with error lines (not done: a rerun purges it and asks again)
        report = {
            "status": "ok" if counts.failed == 0 else "partial",
            "error": None
            if counts.failed == 0
            else f"{counts.failed} of {len(lines)} requests failed (their error lines sent)",
            "requests": len(lines),
            "ok": counts.ok,
            "failed": counts.failed,
            "prompt_tokens": counts.prompt_tokens,
            "completion_tokens": counts.completion_tokens,
            "seconds": round(counts.summary()["seconds"], 2),
        }
        return report, "".join(line + "\n" for line in kept.lines)

    async def result(
        self, store: QueueStore, job: RequestGroup, worker: str, deliveries: int
    ) -> JobResult | LedgerUnavailable | QueueUnavailable | AlteredJob:
        """The group's result (its text read, checked against its id, run), or the
        outage or alteration that kept it from running (for the worker to raise)."""
        mine: dict[str, Any] = {"worker": worker, "deliveries": deliveries}
        try:
            text = job.text
            if text is None:
                assert job.text_object is not None
                text = await store.get_text(job.text_object)
        except QueueUnavailable as exc:
            return exc
        except Exception as exc:  # the object is gone (expired, purged)
            return JobResult.failure(
                f"the requests {job.text_object} cannot be read from the queue: {exc}",
                status="error",
                **mine,
            )
        if group_id(text, job.options) != job.job:  # the id is the hash of text and options
            return AlteredJob(job.job)
        try:
            report, output = await self.run(job, text)
        except (LedgerUnavailable, QueueUnavailable) as exc:
            return exc
        except Exception as exc:  # a bug: this group's error, the worker goes on
            log.error("job failed", job=job.job, error=f"{type(exc).__name__}: {exc}")
            return JobResult.failure(f"internal error: {type(exc).__name__}: {exc}", **mine)
        return JobResult(report, output, **mine)
