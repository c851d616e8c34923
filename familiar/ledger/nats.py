"""The NATS JetStream seat ledger: one deployment cap shared by every familiar on every host.

Keys of the KV bucket (``familiar_seats``; history 1, file storage, per-message TTLs)::

    <dep>.meta        {"label", "cap", "reserve"}: written once per process, for ``fleet``
    <dep>.s.<i>       seat i held: the holder's JSON, TTL ``ttl_s``
    <dep>.w.<ledger>  this ledger is waiting: the holder's JSON + its ``ticket``, TTL ``ttl_s``

A seat is taken with a conditional write (expected last revision of the key: 0, or the
revision of its delete/expiry marker) and given back with a conditional purge, so two
holders never share a seat. One task per ledger renews every key it holds every
``ttl_s / 3`` (each write resets the TTL); a holder that dies (SIGKILL, a host gone)
stops renewing and the server expires its keys after ``ttl_s``. The bucket has a limit
marker TTL, so an expiry leaves a marker that watchers see like a delete.

Waiting never polls the server: each deployment keeps one KV watcher per process, a
mirror of its seats and waiters, and wakes its acquirers when a seat is freed, purged or
expires (a re-check every ``ttl_s`` is only a safety net). Fairness: a process that
cannot take a seat at once writes a waiter key; its ticket is the stream sequence of
that write, so every host orders the queue the same way whatever its clock says.
``choose_seat`` (pure, as the host ledger's rules: sessions first, interactive work
from the top seats, batch work below the reserve) hands the free seats out in ticket
order, and a process only tries the seat its own turn gives it; after it gets one it
re-enters the queue with a new ticket, so processes take turns. Within a process,
acquirers are served first come, first served (interactive ones first).

When the connection is lost, holders keep their seats (renewals resume when it is back)
and acquirers wait, at most ``wait_s`` each, before ``LedgerUnavailable``; one warning
per outage. After a reconnect held seats are re-asserted at once (re-created if they
expired meanwhile) and the mirror is rebuilt; waiters wait a grace of about one TTL so
that holders still running their request win their seats back first: the cap holds
across a server restart (the server keeps the bucket in its store directory). A holder
cut off for longer than the TTL may find its seat taken; it says so and stops renewing.

Durability: JetStream fsyncs its files every ``sync_interval`` (2 minutes by default), so
an OS crash or power loss can lose writes it already acknowledged (nats-io/nats-server
#7564); run ``sync_interval: always`` on a single node, or 3 replicas. For seats this
matters little: every key lives ``ttl_s`` unless renewed, and holders re-assert their
seats after the server comes back, so a lost write costs at most one TTL of a seat
given twice or held by nobody, never a seat stuck for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from familiar.errors import LedgerSetupError, LedgerUnavailable
from familiar.ledger.base import (
    DeploymentView,
    Holder,
    Kind,
    Lease,
    Ledger,
    this_process,
    wait_event,
)
from familiar.ledger.nats_connect import connect, denial, public_url, strip_userinfo
from familiar.ledger.nats_rules import check_server_version, choose_seat, ttl_header
from familiar.ledger.nats_seats import _Conflict, _Held, _Seats
from familiar.ledger.nats_trust import FleetKey
from familiar.ledger.nats_views import read_views

__all__ = ["NatsLedger", "check_server_version", "choose_seat"]

log = structlog.get_logger("familiar.ledger")

MARKER_TTL_S = 30.0  # how long delete and expiry markers stay in the bucket
_WRONG_LAST = (10071, 10164)  # JetStream: wrong last sequence (with, without the number)
_LAST_SEQ = re.compile(r"wrong last sequence: (\d+)")
_UNKNOWN = Holder("?", 0, "?")


class NatsLedger(Ledger):
    """Seats held in a NATS JetStream KV bucket, shared by every process and host."""

    kind = "nats"

    def __init__(
        self,
        url: str,
        *,
        wait_s: float = 60.0,
        ttl_s: float = 10.0,
        holder: Holder | None = None,
        bucket: str = "familiar_seats",
        key: FleetKey | None = None,
    ) -> None:
        if ttl_s < 1.0:
            raise ValueError("ttl_s must be at least 1 s (the server's minimum TTL)")
        self.url, self.where = url, public_url(url)
        self.wait_s, self.ttl_s, self.bucket = wait_s, ttl_s, bucket
        holder = holder or this_process()
        self.holder = replace(holder, command=strip_userinfo(holder.command))
        self.nonce = secrets.token_hex(8)
        #: signs this process's records, checks the others' (see ledger/nats_trust.py)
        self.key = key if key is not None else FleetKey.from_env()
        self.seats_lost = 0  # seats found expired and taken while held
        self._prefix = f"$KV.{bucket}."
        self._op_timeout = max(1.0, min(5.0, ttl_s / 2))
        self._nc: Client | None = None
        self._jsc: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._deps: dict[str, _Seats] = {}
        self._held: dict[str, _Held] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._drops: set[asyncio.Task[Any]] = set()
        self._down_since: float | None = None
        self._up_since = float("-inf")
        self._reconnected = asyncio.Event()
        self.warned = False
        self._opening = False
        self._error = ""
        self._denied = ""  # what the server's permissions refused, if anything
        self._closed = False

    # -- connection ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._nc is not None:
            return
        nc = Client()
        self._opening = True
        try:
            await connect(
                nc,
                self.url,
                wait_s=self.wait_s,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnect,
                reconnected_cb=self._on_reconnect,
            )
            self._opening = False
            await self._setup(nc)
        except BaseException as exc:
            self._opening = False
            with contextlib.suppress(Exception):
                await nc.close()
            if isinstance(exc, TimeoutError | OSError | nats.errors.Error):
                raise self.unavailable(str(exc) or self._error) from exc
            raise
        self._nc, self.warned = nc, False
        self._spawn(self._keep())

    async def _setup(self, nc: Client) -> None:
        version = nc.connected_server_version
        try:
            check_server_version(f"{version.major}.{version.minor}.{version.patch}")
        except ValueError:
            check_server_version("")
        js = self._jsc = nc.jetstream(timeout=self._op_timeout)
        try:
            await js.account_info()
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            raise LedgerSetupError(
                f"the NATS server at {self.where} has no JetStream: run nats-server with -js"
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
            try:
                self._kv = await js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                with contextlib.suppress(nats.js.errors.BadRequestError):  # made by another
                    self._kv = await js.create_key_value(config)
                self._kv = self._kv or await js.key_value(self.bucket)
            stream = f"KV_{self.bucket}"
            info = (await js.stream_info(stream)).config
            if not info.allow_msg_ttl or not info.subject_delete_marker_ttl:
                info.allow_msg_ttl, info.subject_delete_marker_ttl = True, MARKER_TTL_S
                await js.update_stream(info)
        except nats.js.errors.APIError as exc:
            raise LedgerSetupError(
                f"the seat ledger bucket {self.bucket!r} at {self.where} cannot be used: {exc}"
            ) from exc

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats error", url=self.where, error=repr(exc))
        self._error = str(exc) or type(exc).__name__
        denied = denial(self._error)
        if denied and not self._denied:
            self._denied = denied
            log.warning(
                f"the NATS server at {self.where} does not let this user {denied}: the seat "
                "ledger cannot work (docs/QUEUE.md lists the permissions familiar needs)"
            )
        if self._opening and not self.warned:
            self.warned = True
            log.warning(
                f"waiting for the seat ledger at {self.where} (unreachable: {self._error}); "
                f"giving up in {self.wait_s:g} s"
            )

    async def _on_disconnect(self) -> None:
        log.debug("nats disconnected", url=self.where)
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._wake_all()

    async def _on_reconnect(self) -> None:
        log.debug("nats reconnected", url=self.where)
        self._down_since, self._up_since, self.warned = None, time.monotonic(), False
        for seats in self._deps.values():
            seats._synced = False
        self._reconnected.set()
        self._wake_all()

    def _wake_all(self) -> None:
        for dep in self._deps.values():
            dep._wake.set()

    def outage_since(self, failing_since: float | None) -> float | None:
        if self._nc is None or self._closed:
            return float("-inf")
        found = [t for t in (self._down_since, failing_since) if t is not None]
        return min(found) if found else None

    def grace_left(self) -> float:
        return self._up_since + self.ttl_s + 1.0 - time.monotonic()

    def warn_outage(self, error: str) -> None:
        if not self.warned:
            self.warned = True
            log.warning(
                f"the seat ledger at {self.where} is unreachable ({error or self._error}); "
                f"requests for seats wait at most {self.wait_s:g} s"
            )

    def unavailable(self, error: str) -> LedgerUnavailable:
        error = error or self._error
        if self._closed:
            return LedgerUnavailable(f"the seat ledger at {self.where} is closed")
        return LedgerUnavailable(
            f"the seat ledger at {self.where} stayed unreachable for {self.wait_s:g} s"
            + (f" ({error})" if error else "")
        )

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._down_since is None and not self._closed

    @property
    def _js(self) -> JetStreamContext:
        if self._jsc is None:
            raise RuntimeError("the NATS ledger is not open")
        return self._jsc

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("the NATS ledger is not open")
        return self._kv

    # -- writes -------------------------------------------------------------------------

    async def _publish(self, key: str, value: bytes, last: int, purge: bool = False) -> int:
        headers = {
            "Nats-TTL": ttl_header(MARKER_TTL_S if purge else self.ttl_s),
            "Nats-Expected-Last-Subject-Sequence": str(last),
        }
        if purge:
            headers |= {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
        try:
            ack = await self._js.publish(
                self._prefix + key, value, timeout=self._op_timeout, headers=headers
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST:
                found = _LAST_SEQ.search(exc.description or "")
                raise _Conflict(int(found[1]) if found else None) from None
            raise
        return int(ack.seq)

    async def write(self, key: str, value: bytes, last: int) -> int:
        """Write ``key`` (TTL ``ttl_s``) if its last revision is ``last``; an emptied key
        (its marker expired) counts as ``last``."""
        try:
            return await self._publish(key, value, last)
        except _Conflict as exc:
            if exc.actual == 0 and last != 0:
                return await self._publish(key, value, 0)
            raise

    async def purge(self, key: str, last: int) -> int:
        return await self._publish(key, b"", last, purge=True)

    async def put_meta(self, seats: _Seats) -> None:
        meta = {"label": seats.label, "cap": seats.cap, "reserve": seats.reserve}
        data = self.key.seal("meta", f"{seats.id}.meta", json.dumps(meta).encode())
        try:
            await self._js.publish(f"{self._prefix}{seats.id}.meta", data)
        except Exception as exc:
            log.debug("ledger meta not written", deployment=seats.id, error=repr(exc))

    def held_by(self, seats: _Seats) -> list[_Held]:
        """The seats of one deployment this process holds."""
        return [h for h in self._held.values() if h.seats is seats]

    async def take(self, seats: _Seats, seat: int, rev: int, kind: Kind) -> _Held | None:
        holder = replace(self.holder, kind=kind, since=time.time())
        key = f"{seats.id}.s.{seat}"
        value = self.key.seal("seat", key, holder.to_json())
        try:
            new = await self.write(key, value, rev)
        except _Conflict:
            return None
        held = _Held(seats, seat, new, value)
        self._held[held.key] = held
        seats.seen(seat, new, holder)
        return held

    async def _renew(self, held: _Held) -> None:
        async with held.lock:
            if held.released or held.lost:
                return
            try:
                try:
                    held.rev = await self._publish(held.key, held.value, held.rev)
                except _Conflict:  # changed behind us: expired while we were cut off?
                    held.rev = await self._retake(held)
                held.seats.seen(held.seat, held.rev, Holder.from_json(held.value))
            except _Conflict as exc:
                self.lose(held, exc.holder)
            except Exception as exc:
                log.debug("ledger renewal failed", key=held.key, error=repr(exc))

    def renew_now(self, held: _Held) -> None:
        self._spawn(self._renew(held))

    def lose(self, held: _Held, other: Holder | None) -> None:
        """``held`` expired and was taken (this process was paused or cut off past the
        TTL, or the seat was purged): the request on it is cancelled at once (the lease's
        lost future) and asks the ledger again; the TTL or its new holder frees the key."""
        if held.lost or held.released:
            return
        held.lost = True
        self.seats_lost += 1
        who = f"{other.host} pid {other.pid}" if other and other.pid else "another holder"
        log.warning(
            f"seat {held.seat} of {held.seats.label} was taken by {who} while this process "
            f"held it (its key expired while this process was paused or cut off past the "
            f"{self.ttl_s:g} s TTL, or was purged): its request is cancelled and asks for a "
            "seat again (seat_lost)"
        )
        if not held.lost_future.done():
            held.lost_future.set_result(None)

    async def _retake(self, held: _Held) -> int:
        try:
            msg = await self._js.get_msg(f"KV_{self.bucket}", subject=self._prefix + held.key)
            headers, last = msg.headers or {}, int(msg.seq or 0)
        except nats.js.errors.NotFoundError:
            headers, last = {}, 0
        live = last and "KV-Operation" not in headers and "Nats-Marker-Reason" not in headers
        if live and msg.data != held.value:  # (our own value: a renewal whose ack was lost)
            data = self.key.check("seat", held.key, msg.data or b"")
            raise _Conflict(last, Holder.from_json(data or b"") or _UNKNOWN)
        return await self.write(held.key, held.value, last)

    async def _release(self, lease: Lease) -> None:
        held = lease.token
        if not isinstance(held, _Held) or held.released:
            return
        held.released = True
        self._held.pop(held.key, None)
        if held.lost or self._down_since is not None or self._nc is None:
            return  # the TTL frees it
        task = asyncio.create_task(self.drop(held))
        self._drops.add(task)
        task.add_done_callback(self._drops.discard)
        await asyncio.shield(task)

    async def drop(self, held: _Held) -> None:
        """Purge a held seat (if it is still ours); never raises, never waits long."""
        held.released = True
        self._held.pop(held.key, None)
        try:
            async with asyncio.timeout(min(1.0, self._op_timeout)), held.lock:
                rev = await self.purge(held.key, held.rev)
            held.seats.seen(held.seat, rev, None)
        except Exception as exc:
            log.debug("ledger release failed; the TTL frees it", key=held.key, error=repr(exc))

    # -- tasks ---------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def start_seats(self, seats: _Seats) -> None:
        if self._nc is None or self._closed:
            raise RuntimeError("the NATS ledger is not open")
        if seats.pump is None:
            seats.watch = self._spawn(seats.watch_loop())
            seats.pump = self._spawn(seats.pump_loop())

    async def _keep(self) -> None:
        """Renew every key held every ``ttl_s / 3``; after a reconnect, at once, and
        rebuild the mirrors."""
        resync = False
        while True:
            await wait_event(self._reconnected, self.ttl_s / 3)
            resync |= self._reconnected.is_set()
            self._reconnected.clear()
            if self._down_since is not None:
                continue
            renewals = [self._renew(h) for h in list(self._held.values())]
            renewals += [d.renew_ticket() for d in self._deps.values()]
            await asyncio.gather(*renewals)
            if resync:
                resync = False
                for seats in self._deps.values():
                    if seats.watch is not None:
                        seats._synced = False
                        seats.watch.cancel()
                        await asyncio.wait([seats.watch])
                        seats.watch = self._spawn(seats.watch_loop())

    # -- the Ledger interface -------------------------------------------------------------

    def deployment(self, dep_id: str, label: str, cap: int, reserve: int = 0) -> _Seats:
        if dep_id not in self._deps:
            self._deps[dep_id] = _Seats(self, dep_id, label, cap, reserve)
        return self._deps[dep_id]

    async def views(self) -> list[DeploymentView]:
        return await read_views(self)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for seats in self._deps.values():
            for req in seats.waiting():
                if not req.future.done():
                    req.future.set_exception(self.unavailable(""))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=5)
            if stuck:  # never wait without a bound on the way out
                log.debug("ledger tasks did not stop", url=self.where, tasks=len(stuck))
        nc, self._nc = self._nc, None
        if nc is None:
            return
        try:
            if not nc.is_closed and nc.is_connected:
                goodbye = [self.drop(h) for h in list(self._held.values())]
                goodbye += [s.leave() for s in self._deps.values()]
                await asyncio.gather(*goodbye)
            await asyncio.wait_for(nc.drain(), self._op_timeout)
        except Exception as exc:
            log.debug("ledger close", url=self.where, error=repr(exc))
        finally:
            for task in self._drops:
                task.cancel()
            if self._drops:
                await asyncio.wait(list(self._drops), timeout=5)
            with contextlib.suppress(Exception):
                await nc.close()
