"""The work queue as a service: a translation batch handed to the queue, and the queue's
worker on this host's translator slots, both over ``translate/service.open_batch``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from familiar.translate.service import ProgressFactory, check_nats_url, open_batch

if TYPE_CHECKING:
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
    """The queue's worker on this host's translator slots, until cancelled."""
    from familiar.queue.kvcache import KvChunkCache
    from familiar.queue.store import QueueStore
    from familiar.queue.worker import Worker, WorkerSettings

    settings = WorkerSettings(
        ack_wait_s=ack_wait_s, max_deliver=max_deliver, jobs_at_once=jobs_at_once
    )
    store = QueueStore(url, wait_s=cfg.fleet.ledger_wait_s, name="familiar worker")
    async with open_batch(cfg, cfg.fleet, before_fleet=store) as batch:
        worker = Worker(
            store,
            batch.pools,
            KvChunkCache(store, batch.cache),
            settings=settings,
            telemetry=batch.telemetry,
            announce=announce,
        )
        await worker.run()
