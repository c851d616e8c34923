"""One chunk's outcome, asked at most once: from the cache (if it passes today's checks),
from an identical chunk asked at the same time, or from a translator seat through the
dispatcher; a finished translation is cached as it arrives.

Identical chunks are the same request (text, anchor, languages, glossary, format,
model, ``max_tokens``: ``chunks.chunk_key``); the second asker waits for the first. An
asker cancelled (its article failed) leaves the chunk to whoever waits for it next."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

import structlog

from familiar.config.roles import TRANSLATOR
from familiar.dispatch import Dispatcher, WorkItem
from familiar.translate.cache import CachedChunk, ChunkCache
from familiar.translate.chunks import BatchOptions, ChunkOutcome, ChunkTranslator, Job, chunk_key

__all__ = ["AsyncChunkCache", "ChunkAsker"]

log = structlog.get_logger("familiar.translate")


class AsyncChunkCache(Protocol):
    """A chunk cache read and written with awaits (the queue's JetStream KV cache)."""

    async def aget(self, key: str) -> CachedChunk | None: ...

    async def aput(self, key: str, chunk: CachedChunk) -> None: ...


class _Sync:
    """The sqlite :class:`ChunkCache` as an :class:`AsyncChunkCache` (no awaits inside)."""

    def __init__(self, cache: ChunkCache) -> None:
        self.cache = cache

    async def aget(self, key: str) -> CachedChunk | None:
        return self.cache.get(key)

    async def aput(self, key: str, chunk: CachedChunk) -> None:
        self.cache.put(key, chunk)


class ChunkAsker:
    """The outcomes of one batch's chunks, each asked at most once."""

    def __init__(
        self,
        opts: BatchOptions,
        cache: ChunkCache | AsyncChunkCache,
        chunks: ChunkTranslator,
        *,
        model: str,
        max_tokens: int,
    ) -> None:
        self.opts, self.chunks, self.model, self.max_tokens = opts, chunks, model, max_tokens
        self.store: AsyncChunkCache = _Sync(cache) if isinstance(cache, ChunkCache) else cache
        self._asked: dict[str, asyncio.Future[ChunkOutcome]] = {}

    def key(self, job: Job) -> str:
        return chunk_key(self.opts, job, model=self.model, max_tokens=self.max_tokens)

    async def cached(self, job: Job, key: str, rel: Path) -> ChunkOutcome | None:
        """The cached translation, if there is one and it passes today's checks."""
        found = await self.store.aget(key)
        if found is None:
            return None
        problems = self.chunks.problems(job, found.output, found.finish_reason)
        if problems:
            log.info(
                "cached chunk fails the checks; asking again",
                article=str(rel),
                chunk=job.chunk.index,
                problems=problems,
            )
            return None
        return ChunkOutcome(
            found.output,
            ok=True,
            finish_reason=found.finish_reason,
            temperature=found.temperature,
            attempt=found.attempt,
        )

    async def outcome(
        self, dispatcher: Dispatcher[Job, ChunkOutcome], item_id: str, job: Job, rel: Path
    ) -> tuple[ChunkOutcome, str]:
        """The outcome and how it came: ``cache``, ``shared`` (an identical chunk asked
        at the same time) or ``asked``."""
        key = self.key(job)
        while True:
            if not self.opts.force:
                cached = await self.cached(job, key, rel)
                if cached is not None:
                    return cached, "cache"
            pending = self._asked.get(key)
            if pending is None:
                break
            try:
                return await asyncio.shield(pending), "shared"
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # we were cancelled ourselves
                # the asker was cancelled (its article failed): ask ourselves
        fut: asyncio.Future[ChunkOutcome] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._asked[key] = fut
        try:
            result = await (await dispatcher.submit(WorkItem(item_id, TRANSLATOR, job)))
            if result.error is not None:
                raise result.error
            assert result.value is not None
            outcome = result.value
            if outcome.ok:
                await self.store.aput(
                    key,
                    CachedChunk(
                        outcome.text,
                        self.model,
                        outcome.finish_reason,
                        outcome.temperature,
                        outcome.attempt,
                        outcome.split,
                    ),
                )
            fut.set_result(outcome)
            return outcome, "asked"
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            if self._asked.get(key) is fut:
                del self._asked[key]


def _retrieve(fut: asyncio.Future[ChunkOutcome]) -> None:
    """Mark a shared outcome's exception as seen (its asker raised it already)."""
    if not fut.cancelled():
        fut.exception()
