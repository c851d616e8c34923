"""A JetStream key-value bucket whose keys live a TTL unless written again: the storage of
the NATS seat ledger. Names follow nats-py's ``KeyValue`` (``create``, ``update``,
``purge``, ``put``, ``watch``); a conditional write that finds another last revision
raises :class:`KeyWrongLastRevisionError` (nats-py's ``KeyWrongLastSequenceError``).

The bucket (history 1, file storage, direct gets, per-message TTLs, limit markers) is
created by whichever process comes first, with the same settings every time.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from familiar.errors import LedgerSetupError
from familiar.ledger.base import Holder

__all__ = [
    "MARKER_TTL_S",
    "KeyWrongLastRevisionError",
    "LastEntry",
    "TtlKeyValue",
    "ttl_header",
]

MARKER_TTL_S = 30.0  # how long delete and expiry markers stay in the bucket
_WRONG_LAST = (10071, 10164)  # JetStream: wrong last sequence (with, without the number)
_LAST_SEQ = re.compile(r"wrong last sequence: (\d+)")


def ttl_header(seconds: float) -> str:
    return f"{max(1000, round(seconds * 1000))}ms"  # the server's minimum TTL is 1 s


class KeyWrongLastRevisionError(Exception):
    """A conditional write found another last revision (``actual``, when the server says;
    ``holder``, when it is known who holds the key now)."""

    def __init__(self, actual: int | None, holder: Holder | None = None) -> None:
        super().__init__(f"wrong last revision (now {actual})")
        self.actual = actual
        self.holder = holder


@dataclass(frozen=True)
class LastEntry:
    """The last message of a key (a direct get): its revision, value, and whether it is a
    live value (not a delete, purge or expiry marker); revision 0 when there is none."""

    revision: int
    value: bytes
    live: bool


class TtlKeyValue:
    """One KV bucket whose writes carry a TTL (``ttl_s``) and an expected last revision."""

    def __init__(self, bucket: str, ttl_s: float, op_timeout: float) -> None:
        self.bucket, self.ttl_s, self.op_timeout = bucket, ttl_s, op_timeout
        self.stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None

    async def open(self, js: JetStreamContext, where: str) -> None:
        """Find or create the bucket (and let its stream hold per-message TTLs); ``where``
        names the server in errors."""
        try:
            await js.account_info()
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            raise LedgerSetupError(
                f"the NATS server at {where} has no JetStream: run nats-server with -js"
            ) from exc
        config = api.KeyValueConfig(
            bucket=self.bucket,
            description="familiar: seats of deployments (see familiar/ledger/nats.py)",
            history=1,
            storage=api.StorageType.FILE,
            direct=True,
            limit_marker_ttl=MARKER_TTL_S,
        )
        try:
            kv: KeyValue | None = None
            try:
                kv = await js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                with contextlib.suppress(nats.js.errors.BadRequestError):  # made by another
                    kv = await js.create_key_value(config)
                kv = kv or await js.key_value(self.bucket)
            info = (await js.stream_info(self.stream)).config
            if not info.allow_msg_ttl or not info.subject_delete_marker_ttl:
                info.allow_msg_ttl, info.subject_delete_marker_ttl = True, MARKER_TTL_S
                await js.update_stream(info)
        except nats.js.errors.APIError as exc:
            raise LedgerSetupError(
                f"the seat ledger bucket {self.bucket!r} at {where} cannot be used: {exc}"
            ) from exc
        self._js, self._kv = js, kv

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("the NATS ledger is not open")
        return self._js

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("the NATS ledger is not open")
        return self._kv

    async def _publish(self, key: str, value: bytes, last: int, *, purge: bool = False) -> int:
        headers = {
            "Nats-TTL": ttl_header(MARKER_TTL_S if purge else self.ttl_s),
            "Nats-Expected-Last-Subject-Sequence": str(last),
        }
        if purge:
            headers |= {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
        try:
            ack = await self.js.publish(
                self._prefix + key, value, timeout=self.op_timeout, headers=headers
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST:
                found = _LAST_SEQ.search(exc.description or "")
                raise KeyWrongLastRevisionError(int(found[1]) if found else None) from None
            raise
        return int(ack.seq)

    async def create(self, key: str, value: bytes) -> int:
        """Write ``key`` (TTL ``ttl_s``) if it has never been written or is gone for good."""
        return await self._publish(key, value, 0)

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Write ``key`` (TTL ``ttl_s``) if its last revision is ``last``; an emptied key
        (its marker expired too) counts as ``last``. Returns the new revision."""
        try:
            return await self._publish(key, value, last)
        except KeyWrongLastRevisionError as exc:
            if exc.actual == 0 and last != 0:
                return await self._publish(key, value, 0)
            raise

    async def purge(self, key: str, last: int) -> int:
        """Purge ``key`` if its last revision is ``last`` (its marker lives a while)."""
        return await self._publish(key, b"", last, purge=True)

    async def put(self, key: str, value: bytes, *, ttl: bool = True) -> int:
        """Write ``key`` whatever it holds (with the TTL unless ``ttl=False``)."""
        headers = {"Nats-TTL": ttl_header(self.ttl_s)} if ttl else None
        ack = await self.js.publish(
            self._prefix + key, value, timeout=self.op_timeout, headers=headers
        )
        return int(ack.seq)

    async def last(self, key: str) -> LastEntry:
        """The last message of ``key`` (a direct get, one round trip)."""
        try:
            msg = await self.js.get_msg(self.stream, subject=self._prefix + key, direct=True)
        except nats.js.errors.NotFoundError:
            return LastEntry(0, b"", False)
        headers = msg.headers or {}
        live = "KV-Operation" not in headers and "Nats-Marker-Reason" not in headers
        return LastEntry(int(msg.seq or 0), msg.data or b"", live)
