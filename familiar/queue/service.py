"""The work queue as a service: a translation batch handed to the queue, and the queue's
worker on this host's translator slots, both over ``translate/service.open_batch``; an
OpenAI Batch JSONL file handed to the queue in request groups (``submit_requests``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from familiar.translate.service import ProgressFactory, check_nats_url, open_batch

if TYPE_CHECKING:
    from familiar.batch import BatchOptions as RequestsOptions
    from familiar.batch.run import Counts
    from familiar.config.workspace import Config
    from familiar.translate.chunks import BatchOptions
    from familiar.translate.report import ArticleReport


async def submit_to_queue(
    cfg: Config,
    url: str,
    opts: BatchOptions,
    files: list[tuple[Path, Path]],
    reports: list[ArticleReport],
    progress: ProgressFactory,
) -> list[ArticleReport]:
    """A batch handed to the work queue at ``url``; its results collected and written."""
    from familiar.queue.submit import submit_batch

    url = check_nats_url(url)
    with progress() as shown:
        return await submit_batch(
            url,
            cfg.home,
            opts,
            files,
            reports,
            progress=shown,
            wait_s=cfg.fleet.ledger_wait_s,
            collect_timeout_s=cfg.fleet.collect_timeout_s,
        )


async def run_worker(
    cfg: Config,
    url: str,
    *,
    ack_wait_s: float,
    max_deliver: int,
    jobs_at_once: int | None,
    announce: Callable[[str], None] | None,
) -> None:
    """The queue's worker on this host's translator slots (translation jobs) and active
    slots (request groups of ``familiar batch --nats``), until cancelled."""
    from familiar.queue.grouprun import GroupRunner
    from familiar.queue.kvcache import KvChunkCache
    from familiar.queue.store import QueueStore
    from familiar.queue.worker import Worker, WorkerSettings

    settings = WorkerSettings(
        ack_wait_s=ack_wait_s, max_deliver=max_deliver, jobs_at_once=jobs_at_once
    )
    store = QueueStore(url, wait_s=cfg.fleet.ledger_wait_s, name="familiar worker")
    async with open_batch(cfg, cfg.fleet, before_fleet=store, more_slots=cfg.active_slots) as batch:
        fleet = batch.fleet
        groups = GroupRunner(cfg, fleet.clients, sum(s.total for s in fleet.seats.values()))
        worker = Worker(
            store,
            batch.pools,
            KvChunkCache(store, batch.cache),
            settings=settings,
            telemetry=batch.telemetry,
            announce=announce,
            groups=groups,
        )
        await worker.run()


async def submit_requests(
    cfg: Config,
    url: str,
    opts: RequestsOptions,
    total: int,
    progress: Callable[[Counts], None] | None,
    *,
    group_size: int | None = None,
) -> tuple[str, Counts, dict[str, int]]:
    """``familiar batch --nats``: the requests handed to the queue at ``url`` in groups,
    their result lines written as a local batch writes them. The batch's correlation id,
    its counts and the queue's (groups submitted, found queued or stored, sent again)."""
    import time

    from familiar.batch import router
    from familiar.batch.run import Counts, Writer, prepare_output
    from familiar.context import bound_correlation_id, correlation_id, new_correlation_id
    from familiar.queue.group_submit import GroupSubmitter
    from familiar.queue.groups import MAX_REQUESTS, GroupOptions
    from familiar.queue.store import QueueStore
    from familiar.telemetry import Telemetry

    url = check_nats_url(url)
    router(cfg, opts.role, opts.slot)  # a bad --role/--slot here: exit 2, nothing sent
    fleet = cfg.fleet.resolved()  # a bad FAMILIAR_NATS_URL: exit 2
    done = prepare_output(opts.out, opts.errors, force=opts.force)
    counts = Counts(total=total)
    with bound_correlation_id(correlation_id.get() or new_correlation_id()) as cid:
        telemetry = Telemetry(cfg.home)
        async with (
            telemetry,
            QueueStore(url, wait_s=fleet.ledger_wait_s, name="familiar batch") as store,
        ):
            telemetry.emit(
                "batch.start",
                {"kind": "jsonl", "requests": total, "already_done": len(done), "queue": True},
            )
            writer = Writer(opts.out, opts.errors)
            t0 = time.monotonic()
            submitter = GroupSubmitter(
                store,
                opts.requests,
                GroupOptions(opts.role, opts.slot),
                writer,
                counts,
                done,
                force=opts.force,
                max_requests=group_size or MAX_REQUESTS,
                progress=progress,
                collect_timeout_s=fleet.collect_timeout_s,
            )
            try:
                await submitter.run()
            finally:
                writer.close()
                telemetry.emit(
                    "batch.end",
                    {
                        **counts.summary(),
                        **submitter.queue.fields(),
                        "queue": True,
                        "duration_ms": round((time.monotonic() - t0) * 1000),
                    },
                )
    return cid, counts, submitter.queue.fields()
