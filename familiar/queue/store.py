"""The queue's JetStream objects, and the connection to them.

Created on first use by whichever process comes first (the same settings every time)::

    stream  familiar_jobs     subjects familiar.queue.jobs.<job> (and the older
                               familiar.queue.jobs); WorkQueue retention (a job is gone
                               once acked), file storage, duplicate window 6 h
    KV      familiar_results   job id -> JobResult JSON; history 1, kept 7 days
    KV      familiar_chunks    chunk cache key -> CachedChunk JSON; kept 30 days
    object  familiar_queue     ``article.<job>`` / ``result.<job>``: texts over the
                               server's payload limit; kept 7 days
    subject familiar.queue.done.<job>   core NATS: "a result is stored" (a hint only)

The workers' durable pull consumer (``familiar_workers``) is the worker's (see
``worker.py``). Every call that talks to the server goes through :meth:`QueueStore.call`:
while the server is away it is retried for up to ``wait_s`` (one warning), then
``QueueUnavailable`` names the URL.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from familiar.errors import QueueSetupError, QueueUnavailable
from familiar.ledger.nats_connect import TRANSIENT, NatsConnection, public_url
from familiar.ledger.nats_trust import FleetKey
from familiar.queue.jobs import JobResult

log = structlog.get_logger("familiar.queue")

T = TypeVar("T")

STREAM = "familiar_jobs"
SUBJECT = "familiar.queue.jobs"  # + ".<job>": one subject per job, so it can be looked up
DONE = "familiar.queue.done"
CONSUMER = "familiar_workers"
RESULTS = "familiar_results"
CHUNKS = "familiar_chunks"
OBJECTS = "familiar_queue"
CORRELATION = "Familiar-Correlation-Id"
JOB = "Familiar-Job"
DUPLICATE_WINDOW_S = 6 * 3600.0
DAY = 86400.0
_HEADROOM = 8192  # headers and JSON around a text that must still fit one message


class QueueStore:
    """A connection to the queue's server and its stream, buckets and object store."""

    def __init__(
        self,
        url: str,
        *,
        wait_s: float = 60.0,
        op_timeout: float = 5.0,
        inline_limit: int | None = None,
        name: str = "familiar",
        key: FleetKey | None = None,
    ) -> None:
        self.url, self.where = url, public_url(url)
        #: signs results and chunks; checks them when read back (see ledger/nats_trust.py)
        self.key = key if key is not None else FleetKey.from_env()
        self.wait_s, self.op_timeout, self.name = wait_s, op_timeout, name
        self._inline_limit = inline_limit
        self.conn = NatsConnection(
            url,
            wait_s=wait_s,
            what="work queue",
            waits="waiting for it",
            unavailable=QueueUnavailable,
            refused=QueueSetupError,
            name=name,
        )
        self._js: JetStreamContext | None = None
        self._kv: dict[str, KeyValue] = {}
        self._obs: ObjectStore | None = None
        #: set when the connection comes back after a loss (the collector re-checks)
        self.reconnected = self.conn.reconnected

    # -- connection (ledger/nats_connect.py: the one the seat ledger holds too) --------

    async def __aenter__(self) -> QueueStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        nc = await self.conn.open()
        try:
            await self._setup(nc)
        except BaseException as exc:
            await self.conn.close()
            if self.conn.denied and isinstance(exc, TRANSIENT):
                raise self.conn.refusal() from exc
            if isinstance(exc, TRANSIENT):
                raise self.unavailable(str(exc)) from exc
            raise

    async def close(self) -> None:
        await self.conn.close(flush=True)  # naks and notices still buffered go out first

    def warn(self, error: str = "") -> None:
        self.conn.warn(error)

    def unavailable(self, error: str = "") -> Exception:
        return self.conn.unavailable(error)

    async def call(self, op: Callable[[], Awaitable[T]], what: str = "") -> T:
        """``await op()``, retried while the server is away, up to ``wait_s``."""
        return await self.conn.call(op, what)

    @property
    def nc(self) -> Client:
        if self.conn.nc is None:
            raise self.unavailable("not connected")
        return self.conn.nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "open() first"
        return self._js

    @property
    def inline_limit(self) -> int:
        """The largest text (bytes) that travels inside a message."""
        if self._inline_limit is not None:
            return self._inline_limit
        return max(1024, self.nc.max_payload - _HEADROOM)

    # -- setup --------------------------------------------------------------------------

    async def _setup(self, nc: Client) -> None:
        js = self._js = nc.jetstream(timeout=self.op_timeout)
        try:
            await js.account_info()
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            raise QueueSetupError(
                f"the NATS server at {self.where} has no JetStream: run nats-server with -js"
            ) from exc
        try:
            await _ensure_stream(js)
            for bucket, ttl, what in (
                (RESULTS, 7 * DAY, "translated articles by job id"),
                (CHUNKS, 30 * DAY, "the translation chunk cache"),
            ):
                self._kv[bucket] = await _ensure_bucket(js, bucket, ttl, what)
            try:
                self._obs = await js.object_store(OBJECTS)
            except nats.js.errors.BucketNotFoundError:
                config = api.ObjectStoreConfig(
                    bucket=OBJECTS,
                    description="familiar: articles and results over the payload limit",
                    ttl=7 * DAY,
                    storage=api.StorageType.FILE,
                )
                with contextlib.suppress(nats.js.errors.BadRequestError):
                    self._obs = await js.create_object_store(OBJECTS, config=config)
                self._obs = self._obs or await js.object_store(OBJECTS)
        except nats.js.errors.APIError as exc:
            raise QueueSetupError(
                f"the work queue at {self.where} cannot be set up: {exc}"
            ) from exc

    def kv(self, bucket: str) -> KeyValue:
        return self._kv[bucket]

    # -- texts and results --------------------------------------------------------------

    def fits(self, text: str) -> bool:
        return len(text.encode("utf-8")) <= self.inline_limit

    async def put_text(self, name: str, text: str) -> None:
        obs = self._obs
        assert obs is not None
        await self.call(lambda: obs.put(name, text.encode("utf-8")), f"store {name}")

    async def get_text(self, name: str) -> str:
        obs = self._obs
        assert obs is not None
        found = await self.call(lambda: obs.get(name), f"read {name}")
        return bytes(found.data or b"").decode("utf-8")

    async def result(self, job: str) -> tuple[JobResult, int] | None:
        """The stored result of ``job`` and its revision; None when there is none (or an
        unreadable one, which is then asked again)."""
        kv = self._kv[RESULTS]

        async def get() -> KeyValue.Entry | None:
            try:
                return await kv.get(job)
            except nats.js.errors.KeyNotFoundError:
                return None

        entry = await self.call(get, "read a result")
        if entry is None or not entry.value:
            return None
        data = self.key.check("result", job, entry.value)
        if data is None:  # forged: as if there were none (the job runs for real)
            return None
        try:
            return JobResult.decode(data), int(entry.revision or 0)
        except ValueError as exc:
            log.warning("unreadable job result; asking again", job=job, error=str(exc))
            return None

    async def output(self, result: JobResult) -> str | None:
        """The result's output; ``ValueError`` when its object does not match the digest
        in its name (the name is covered by the result's mac)."""
        name = result.output_object
        if name is None:
            return result.output
        text = await self.get_text(name)
        digest = name.rpartition(".")[2]
        if len(digest) == 64 and hashlib.sha256(text.encode()).hexdigest() != digest:
            self.key.rejected["output"] += 1
            raise ValueError(f"the stored output {name} does not match its digest")
        return text

    async def put_result(self, job: str, result: JobResult) -> None:
        """Store ``result`` (its output in the object store when too big), then say so on
        ``familiar.queue.done.<job>``."""
        if result.output is not None and not self.fits(result.output):
            name = f"result.{job}.{hashlib.sha256(result.output.encode()).hexdigest()}"
            await self.put_text(name, result.output)
            result = JobResult(result.report, None, name, result.worker, result.deliveries)
        kv = self._kv[RESULTS]
        data = self.key.seal("result", job, result.encode())
        await self.call(lambda: kv.put(job, data), "store a result")
        with contextlib.suppress(*TRANSIENT):
            await self.nc.publish(f"{DONE}.{job}", b"")

    async def queued(self, job: str) -> bool:
        """Whether ``job`` is in the stream: waiting, or held by a worker that has not acked
        it (a WorkQueue stream drops a message only when it is acked)."""
        js = self.js

        async def look() -> bool:
            try:
                await js.get_last_msg(STREAM, f"{SUBJECT}.{job}")
            except nats.js.errors.NotFoundError:
                return False
            return True

        return await self.call(look, "look up a job")

    async def forget(self, job: str) -> None:
        """Purge a failed result before the job is asked again."""
        kv = self._kv[RESULTS]
        await self.call(lambda: kv.purge(job), "purge a result")


async def _ensure_stream(js: JetStreamContext) -> None:
    subjects = [SUBJECT, f"{SUBJECT}.>"]
    try:
        info = (await js.stream_info(STREAM)).config
    except nats.js.errors.NotFoundError:
        pass
    else:
        if not set(subjects) <= set(info.subjects or []):  # made by an older familiar
            info.subjects = sorted({*(info.subjects or []), *subjects})
            await js.update_stream(info)
        return
    with contextlib.suppress(nats.js.errors.BadRequestError):  # made by another meanwhile
        await js.add_stream(
            api.StreamConfig(
                name=STREAM,
                description="familiar: translation jobs (see familiar/queue/store.py)",
                subjects=subjects,
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
        )


async def _ensure_bucket(js: JetStreamContext, bucket: str, ttl: float, what: str) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    config = api.KeyValueConfig(
        bucket=bucket,
        description=f"familiar: {what}",
        history=1,
        ttl=ttl,
        storage=api.StorageType.FILE,
        direct=True,
    )
    with contextlib.suppress(nats.js.errors.BadRequestError):
        return await js.create_key_value(config)
    return await js.key_value(bucket)
