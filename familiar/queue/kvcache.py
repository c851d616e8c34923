"""The chunk cache in JetStream KV: finished chunks shared by every worker.

Same keys and rows as the sqlite cache (``translate/cache.py``), read and written with
awaits (``translate.asking.AsyncChunkCache``). The worker's own sqlite cache stays in
front: a hit there costs no round trip, and every chunk is written to both. The KV cache
is a help, never a requirement: reads and writes wait for a restarting server (as every
queue call does, up to its ``wait_s``), and past that a read is a miss and a write is
kept locally, so an outage costs at most some chunks asked again, never a job.
A redelivered job finds every chunk its first worker finished (the first worker wrote
each one as it arrived) and asks only for the rest.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import nats.js.errors
import structlog

from familiar.errors import QueueUnavailable
from familiar.queue.store import CHUNKS, QueueStore
from familiar.translate.cache import CachedChunk, ChunkCache

log = structlog.get_logger("familiar.queue")


def encode_chunk(chunk: CachedChunk) -> bytes:
    return json.dumps(asdict(chunk), ensure_ascii=False, separators=(",", ":")).encode()


def decode_chunk(data: bytes) -> CachedChunk:
    raw = json.loads(data)
    return CachedChunk(
        str(raw["output"]),
        str(raw.get("model") or ""),
        None if raw.get("finish_reason") is None else str(raw["finish_reason"]),
        None if raw.get("temperature") is None else float(raw["temperature"]),
        int(raw.get("attempt") or 0),
        int(raw.get("split") or 0),
    )


class KvChunkCache:
    """Chunk cache rows in the ``familiar_chunks`` bucket, behind an optional local cache."""

    def __init__(self, store: QueueStore, local: ChunkCache | None = None) -> None:
        self.store = store
        self.local = local
        self.hits = self.misses = self.puts = 0

    async def aget(self, key: str) -> CachedChunk | None:
        if self.local is not None:
            found = self.local.get(key)
            if found is not None:
                self.hits += 1
                return found
        kv = self.store.kv(CHUNKS)

        async def get() -> bytes | None:
            try:
                return (await kv.get(key)).value
            except nats.js.errors.KeyNotFoundError:
                return None

        try:
            value = await self.store.call(get, "read the chunk cache")
        except QueueUnavailable as exc:
            log.debug("chunk cache read failed; a miss", error=str(exc))
            value = None
        if value:
            value = self.store.key.check("chunk", key, value)  # forged: a miss
        if not value:
            self.misses += 1
            return None
        try:
            chunk = decode_chunk(value)
        except (ValueError, KeyError, TypeError):
            self.misses += 1
            return None
        self.hits += 1
        if self.local is not None:
            self.local.put(key, chunk)
        return chunk

    async def aput(self, key: str, chunk: CachedChunk) -> None:
        if self.local is not None:
            self.local.put(key, chunk)
        data = self.store.key.seal("chunk", key, encode_chunk(chunk))
        if len(data) > self.store.inline_limit:
            return  # one chunk over the payload limit: kept locally only
        kv = self.store.kv(CHUNKS)
        try:
            await self.store.call(lambda: kv.put(key, data), "write the chunk cache")
            self.puts += 1
        except QueueUnavailable as exc:
            log.debug("chunk cache write failed; kept locally", error=str(exc))
