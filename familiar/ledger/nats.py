"""The NATS JetStream seat ledger: one deployment cap shared by every familiar on every host.

Keys of the KV bucket (``familiar_seats``; history 1, file storage, per-message TTLs)::

    <dep>.meta        {"label", "cap", "reserve"}: written once per process, for ``fleet``
    <dep>.s.<i>       seat i held: the holder's JSON, TTL ``ttl_s``
    <dep>.w.<ledger>  this ledger is waiting: the holder's JSON + its ``ticket``, TTL ``ttl_s``
    <dep>.c.<ledger>  the cap (``parallel``) this ledger uses, TTL ``ttl_s``: the
                      strictest live one applies (processes whose slots files disagree)

A seat is taken with a conditional write (expected last revision of the key: 0, or the
revision of its delete/expiry marker) and given back with a conditional purge, or handed
on: written, conditionally too, as granted to the waiting process whose turn it is, which
uses it at once (one hop instead of purge, watch, take: ``nats_grants``); so two holders
never share a seat. One task per ledger renews every key it holds every
``ttl_s / 3`` (each write resets the TTL); a holder that dies (SIGKILL, a host gone)
stops renewing and the server expires its keys after ``ttl_s``. The bucket has a limit
marker TTL, so an expiry leaves a marker that watchers see like a delete.

Waiting never polls the server: each deployment keeps one KV watcher per process, a
mirror of its seats and waiters, and wakes its acquirers when a seat is freed, purged or
expires (a re-check every ``ttl_s`` is only a safety net). Fairness: a process that
cannot take a seat at once writes a waiter key; its ticket is the stream sequence of
that write, so every host orders the queue the same way whatever its clock says.
the seat policy (``ledger/policy.py``, the host ledger's too: the strictest live cap,
sessions first, interactive work from the top seats, batch work below the reserve,
patience with a waiter ahead that leaves a seat free) hands the free seats out in ticket
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
import secrets
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import structlog
from nats.aio.client import Client

from familiar.errors import LedgerUnavailable
from familiar.ledger.base import DeploymentView, Holder, Ledger, this_process, wait_event
from familiar.ledger.nats_connect import TRANSIENT, NatsConnection, public_url, strip_userinfo
from familiar.ledger.nats_held import HeldSeats
from familiar.ledger.nats_kv import MARKER_TTL_S, TtlKeyValue
from familiar.ledger.nats_rules import check_server_version
from familiar.ledger.nats_seats import NatsSeats
from familiar.ledger.nats_trust import FleetKey
from familiar.ledger.nats_views import read_views
from familiar.ledger.policy import choose_seat

__all__ = ["MARKER_TTL_S", "NatsLedger", "NatsSeats", "check_server_version", "choose_seat"]

log = structlog.get_logger("familiar.ledger")


class NatsLedger(Ledger):
    """Seats held in a NATS JetStream KV bucket, shared by every process and host: the
    connection (``NatsConnection``), the bucket (``TtlKeyValue``), the seats held
    (``HeldSeats``) and one ``NatsSeats`` per deployment, tied together."""

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
        self.op_timeout = max(1.0, min(5.0, ttl_s / 2))
        self.conn = NatsConnection(
            url,
            wait_s=wait_s,
            what="seat ledger",
            waits="requests for seats wait",
            unavailable=LedgerUnavailable,
            quiet=True,
            on_change=self._on_change,
        )
        self.kv = TtlKeyValue(bucket, ttl_s, self.op_timeout)
        self.held = HeldSeats(self.kv, self.key, self.holder, self.spawn)
        self._deps: dict[str, NatsSeats] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def seats_lost(self) -> int:
        """Seats found expired and taken while held."""
        return self.held.lost_count

    @property
    def deployments(self) -> list[NatsSeats]:
        return list(self._deps.values())

    # -- connection ---------------------------------------------------------------------

    async def open(self) -> None:
        if self.conn.nc is not None:
            return
        nc = await self.conn.open()
        try:
            await self._setup(nc)
        except BaseException as exc:
            await self.conn.close()
            if isinstance(exc, TRANSIENT):
                raise self.unavailable(str(exc)) from exc
            raise
        self.spawn(self._keep())

    async def _setup(self, nc: Client) -> None:
        version = nc.connected_server_version
        try:
            check_server_version(f"{version.major}.{version.minor}.{version.patch}")
        except ValueError:
            check_server_version("")
        await self.kv.open(nc.jetstream(timeout=self.op_timeout), self.where)

    def _on_change(self, up: bool) -> None:
        for seats in self._deps.values():
            if up:
                seats.resync()
            else:
                seats.wake()

    @property
    def warned(self) -> bool:
        return self.conn.warned

    def outage_since(self, failing_since: float | None) -> float | None:
        if self.conn.nc is None or self._closed:
            return float("-inf")
        found = [t for t in (self.conn.down_since, failing_since) if t is not None]
        return min(found) if found else None

    def grace_left(self) -> float:
        return self.conn.up_since + self.ttl_s + 1.0 - time.monotonic()

    def warn_outage(self, error: str) -> None:
        self.conn.warn(error)

    def clear_warning(self) -> None:
        self.conn.warned = False

    def unavailable(self, error: str) -> Exception:
        if self._closed:
            return LedgerUnavailable(f"the seat ledger at {self.where} is closed")
        return self.conn.unavailable(error)

    @property
    def connected(self) -> bool:
        return self.conn.up and not self._closed

    def reachable(self) -> bool:
        """Whether a release can reach the server now (else the TTL frees the seat)."""
        return self.conn.up

    # -- tasks ---------------------------------------------------------------------------

    def opened(self) -> bool:
        return self.conn.nc is not None and not self._closed

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _keep(self) -> None:
        """Renew every key held every ``ttl_s / 3``; after a reconnect, at once, and
        rebuild the mirrors."""
        resync = False
        reconnected = self.conn.reconnected
        while True:
            await wait_event(reconnected, self.ttl_s / 3)
            resync |= reconnected.is_set()
            reconnected.clear()
            if self.conn.down_since is not None:
                continue
            renewals = [self.held.renew_all()]
            for dep in self._deps.values():
                renewals.append(dep.renew())
            await asyncio.gather(*renewals)
            if resync:
                resync = False
                for seats in self._deps.values():
                    if seats.watch is not None:
                        seats.resync()
                        seats.watch.cancel()
                        await asyncio.wait([seats.watch])
                        seats.watch = self.spawn(seats.watch_loop())

    # -- the Ledger interface -------------------------------------------------------------

    def deployment(self, dep_id: str, label: str, cap: int, reserve: int = 0) -> NatsSeats:
        if dep_id not in self._deps:
            self._deps[dep_id] = NatsSeats(self, dep_id, label, cap, reserve)
        return self._deps[dep_id]

    async def views(self) -> list[DeploymentView]:
        return await read_views(
            self.kv.kv, self.key, list(self._deps.values()), self.op_timeout * 4
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for seats in self._deps.values():
            seats.fail_all(self.unavailable(""))
        stuck = set(self._tasks)
        deadline = time.monotonic() + 5  # never wait without a bound on the way out
        while stuck and time.monotonic() < deadline:
            for task in stuck:  # again: Python 3.11's wait_for (nats-py's requests) can
                task.cancel()  # swallow a cancellation that comes as its answer does
            _done, stuck = await asyncio.wait(stuck, timeout=0.2)
        if stuck:
            log.debug("ledger tasks did not stop", url=self.where, tasks=len(stuck))
        nc = self.conn.nc
        if nc is None:
            return
        try:
            if not nc.is_closed and nc.is_connected:
                goodbye = [self.held.drop_all()]
                goodbye += [s.goodbye() for s in self._deps.values()]
                await asyncio.gather(*goodbye)
            await asyncio.wait_for(nc.drain(), self.op_timeout)
        except Exception as exc:
            log.debug("ledger close", url=self.where, error=repr(exc))
        finally:
            await self.held.stop()
            await self.conn.close()
