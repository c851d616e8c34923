"""SlotClient: the only code in familiar that talks to LLM servers.

One client per slot. Per request attempt it takes a seat (the slot's ``parallel``
cap, shared by all replicas), passes the request-rate throttle, picks the replica
(the one the request's affinity key prefers unless it is too busy, else the fewest
outstanding requests; replicas cooling down after a failure skipped), streams the
answer so time to first token is measured, and reports a :class:`CallEvent` to
every hook. Failed attempts (connect errors, timeouts, 429,
5xx, malformed answers) are retried by tenacity with exponential backoff and
jitter, honouring ``Retry-After``; the seat is given back while waiting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from asyncio_throttle.throttler import Throttler

from familiar.client.reading import Answer, Kind, check_finished, read_stream, read_whole
from familiar.client.replicas import Replica, ReplicaSet
from familiar.client.transport import Limits, Pipe, Target, dumps, pipe_for
from familiar.client.warm import WarmGate
from familiar.client.wire import Backoff, RetryPolicy, Sent, map_errors, with_retries
from familiar.config.slots import Slot
from familiar.context import correlation_id, current_affinity
from familiar.errors import (
    BackendError,
    BackendHTTPError,
    SeatLost,
)
from familiar.ledger.lost import SeatGuard
from familiar.logs import redact_url, register_secret, register_url_secrets
from familiar.seats import Seats

log = structlog.get_logger("familiar.client.backend")

Message = Mapping[str, Any]


@dataclass(frozen=True)
class _Prefix:
    """What the warm gate said of a request's prompt prefix."""

    cached: bool = False  # warmed before: the replica its key prefers has it cached
    on_first: Callable[[], None] | None = None  # this request warms it: call at first token


_COLD = _Prefix()


@dataclass(frozen=True)
class CallResult:
    """A finished request: the text and everything measured on the way."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    ttft_s: float | None
    queue_wait_s: float
    attempts: int
    replica: str
    slot: str
    model: str
    #: prompt tokens the server served from its prefix cache (None: it did not say)
    cached_tokens: int | None = None

    def json(self) -> Any:
        """The text parsed as JSON (for schema-constrained calls)."""
        return json.loads(self.text)


@dataclass(frozen=True)
class CallEvent:
    """One HTTP attempt to a backend, as seen by telemetry hooks."""

    slot: str
    replica: str
    model: str
    runtime: str
    role: str | None
    kind: Kind
    attempt: int
    status: Literal["ok", "error", "cancelled"]
    error_type: str | None
    http_status: int | None
    latency_s: float
    ttft_s: float | None
    #: the whole wait for a seat: this process's queue (+ rate throttle), then the ledger
    queue_wait_s: float
    local_wait_s: float
    ledger_wait_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    correlation_id: str | None
    seats_in_use: int
    seats_total: int
    stream: bool = True
    response_id: str | None = None
    response_model: str | None = None
    #: prompt tokens the server served from its prefix cache (None: it did not say)
    cached_tokens: int | None = None


Hook = Callable[[CallEvent], None]


#: seats lost in a row by one attempt before it fails (a bus writer purging seats over
#: and over must not keep a request asking for ever)
MAX_SEATS_LOST = 8


class SlotClient:
    """Talks to one slot: seats, throttle, retries, replica choice, streaming."""

    def __init__(
        self,
        slot: Slot,
        *,
        seats: Seats | None = None,
        transport: Any = None,
        retry: RetryPolicy | None = None,
        hooks: Sequence[Hook] = (),
        stream: bool = True,
    ) -> None:
        if slot.embedded:
            raise ValueError(f"slot {slot.name!r} is 'embedded': resolve it with Fleet first")
        self.slot = slot
        self.seats = seats if seats is not None else Seats(slot.parallel)
        self.retry = dataclasses.replace(
            retry or RetryPolicy(), max_retry_after_s=slot.max_retry_after_s
        )
        self._backoff = Backoff(self.retry, slot.name)  # and Retry-After, announced
        self.hooks: list[Hook] = list(hooks)
        self.stream = stream
        self._throttler = _throttler(slot.rps)
        self.seats_lost = 0  # requests cancelled because their (NATS) seat was lost
        size = max(self.seats.total, slot.parallel) + 2
        # timeout_s bounds the whole request (asyncio.timeout in _request); the HTTP
        # client's read timeout is the stall limit: no byte for that long aborts the
        # attempt. A non-streamed answer sends its first byte at the end: no stall limit.
        stall = self._stall_s = min(slot.stall_timeout_s, slot.timeout_s)
        connect = min(slot.connect_timeout_s, slot.timeout_s)
        read = stall if stream else slot.timeout_s
        self._pipe = pipe_for(Limits(size, connect, read), transport)
        key = slot.api_key()
        register_secret(key)
        for url in slot.url:
            register_url_secrets(url)  # the token or password, and its Basic-auth form
        self.replica_set = replica_set(slot, self._pipe, key, self.retry.cooldown_s)
        self.warm_gate = WarmGate() if slot.warm else None

    def __repr__(self) -> str:  # never shows a key
        return (
            f"SlotClient(slot={self.slot.name!r}, urls={[r.label for r in self.replicas]!r}, "
            f"seats={self.seats!r})"
        )

    async def aclose(self) -> None:
        await self._pipe.aclose()

    async def __aenter__(self) -> SlotClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- public calls ---------------------------------------------------------------

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        role: str | None = None,
        json_schema: Mapping[str, Any] | None = None,
        schema_name: str = "result",
        **params: Any,
    ) -> CallResult:
        """A chat completion; ``json_schema`` asks for schema-constrained output."""
        body: dict[str, Any] = {"messages": list(messages), **_clean(params)}
        if json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": dict(json_schema), "strict": True},
            }
        return await self._call("chat", body, role)

    async def complete(self, prompt: str, *, role: str | None = None, **params: Any) -> CallResult:
        """A raw text completion (``/v1/completions``)."""
        return await self._call("completion", {"prompt": prompt, **_clean(params)}, role)

    # -- machinery --------------------------------------------------------------------

    async def _call(self, kind: Kind, body: dict[str, Any], role: str | None) -> CallResult:
        cap = self.slot.max_tokens
        if cap is not None:
            body["max_tokens"] = min(int(body.get("max_tokens") or cap), cap)
        gate = self.warm_gate
        key = gate.key(current_affinity(), body) if gate is not None else None
        if gate is None or key is None:
            return await self._attempts(kind, body, role, _COLD)
        warmer = await gate.enter(key)  # warm, then fan out (familiar/client/warm.py)
        if warmer is None:
            return await self._attempts(kind, body, role, _Prefix(cached=True))
        try:
            first = functools.partial(gate.warmed, key, warmer)
            result = await self._attempts(kind, body, role, _Prefix(on_first=first))
        except BaseException:
            gate.leave(key, warmer)  # no first token: the next one warms
            raise
        gate.warmed(key, warmer)  # an answer without text (tool calls) warmed it too
        return result

    async def _attempts(
        self, kind: Kind, body: dict[str, Any], role: str | None, prefix: _Prefix
    ) -> CallResult:
        first_wait: list[float] = []

        async def attempt(n: int) -> CallResult:
            return await self._attempt(kind, body, role, n, first_wait, prefix)

        return await with_retries(self.retry, self._backoff.wait, attempt)

    async def _attempt(
        self,
        kind: Kind,
        body: dict[str, Any],
        role: str | None,
        n: int,
        first_wait: list[float],
        prefix: _Prefix = _COLD,
    ) -> CallResult:
        """One attempt; a request cancelled because its seat was lost asks for a seat
        again (``seat_lost`` is not the backend's failure: not an attempt, no cool-down)."""
        for lost in range(MAX_SEATS_LOST + 1):
            try:
                return await self._attempt_on_seat(kind, body, role, n, first_wait, prefix)
            except SeatLost:
                self.seats_lost += 1
                if lost == MAX_SEATS_LOST:  # someone keeps taking our seats: no endless loop
                    raise
        raise AssertionError("unreachable")

    async def _attempt_on_seat(
        self,
        kind: Kind,
        body: dict[str, Any],
        role: str | None,
        n: int,
        first_wait: list[float],
        prefix: _Prefix = _COLD,
    ) -> CallResult:
        queued = time.monotonic()
        async with self.seats.hold() as held:
            ledger = self.seats.ledger
            lost = ledger.lost(held.lease) if ledger and held.lease else None
            if self._throttler is not None:
                async with self._throttler:
                    pass
            queue_wait = time.monotonic() - queued
            waits = (queue_wait - held.ledger_wait_s, held.ledger_wait_s)
            if not first_wait:
                first_wait.append(queue_wait)
            replica = self.replica_set.pick(current_affinity(), cached=prefix.cached)
            replica.outstanding += 1
            start = time.monotonic()
            acc = Answer(on_first=prefix.on_first)
            error: BackendError | None = None
            cancelled = False
            try:
                async with SeatGuard(lost, f"seat of {self.slot.name!r}"):
                    await self._request(replica, kind, body, acc, start)
            except BackendError as exc:
                error = exc
                raise
            except (asyncio.CancelledError, SeatLost):
                cancelled = True
                raise
            finally:
                replica.outstanding -= 1
                latency = time.monotonic() - start
                if not cancelled:
                    cooled = self.replica_set.record(replica, error)
                    if cooled is not None and error is not None:
                        warn_cooling(self.slot.name, replica, cooled, error)
                self._emit(kind, role, n, replica, acc, error, latency, waits, cancelled)
        return CallResult(
            text="".join(acc.text),
            finish_reason=acc.finish_reason,
            prompt_tokens=acc.prompt_tokens,
            completion_tokens=acc.completion_tokens,
            latency_s=latency,
            ttft_s=acc.ttft_s,
            queue_wait_s=first_wait[0],
            attempts=n,
            replica=replica.label,
            slot=self.slot.name,
            model=self.slot.model,
            cached_tokens=acc.cached_tokens,
        )

    @property
    def replicas(self) -> list[Replica]:
        return self.replica_set.replicas

    async def _request(
        self, replica: Replica, kind: Kind, body: dict[str, Any], acc: Answer, start: float
    ) -> None:
        target: Target = replica.client
        cid = correlation_id.get()
        headers = {**target.headers, "x-correlation-id": cid} if cid else target.headers
        name, url = self.slot.name, replica.label
        sent = Sent()
        with map_errors(name, url, timeout_s=self.slot.timeout_s, stall_s=self._stall_s, sent=sent):
            async with asyncio.timeout(self.slot.timeout_s):
                payload = {"model": self.slot.model, **body}
                if self.stream:
                    payload["stream"] = True
                    payload["stream_options"] = _USAGE
                content = dumps(payload).encode()
                where = target.chat if kind == "chat" else target.completion
                if self.stream:
                    await read_stream(
                        self._pipe, where, headers, content, kind, acc, start, sent, self._stall_s
                    )
                else:
                    await read_whole(self._pipe, where, headers, content, kind, acc, sent)
        check_finished(acc, name, url)

    def _emit(
        self,
        kind: Kind,
        role: str | None,
        attempt: int,
        replica: Replica,
        acc: Answer,
        error: BackendError | None,
        latency: float,
        waits: tuple[float, float],
        cancelled: bool = False,
    ) -> None:
        if not self.hooks:
            return
        event = call_event(
            self.slot, self.seats, self.stream, kind, role, attempt, replica, acc, error,
            latency, waits, cancelled,
        )  # fmt: skip
        for hook in self.hooks:
            try:
                hook(event)
            except Exception:  # a hook must never break the work
                log.exception("event hook failed", hook=repr(hook))


def call_event(
    slot: Slot,
    seats: Seats,
    stream: bool,
    kind: Kind,
    role: str | None,
    attempt: int,
    replica: Replica,
    acc: Answer,
    error: BackendError | None,
    latency: float,
    waits: tuple[float, float],
    cancelled: bool,
) -> CallEvent:
    """One attempt as telemetry hooks see it."""
    status: Literal["ok", "error", "cancelled"] = (
        "cancelled" if cancelled else "ok" if error is None else "error"
    )
    return CallEvent(
        slot=slot.name,
        replica=replica.label,
        model=slot.model,
        runtime=slot.runtime,
        role=role,
        kind=kind,
        attempt=attempt,
        status=status,
        error_type="CancelledError"
        if cancelled
        else (None if error is None else type(error).__name__),
        http_status=error.status
        if isinstance(error, BackendHTTPError)
        else (200 if status == "ok" else None),
        latency_s=latency,
        ttft_s=acc.ttft_s,
        queue_wait_s=waits[0] + waits[1],
        local_wait_s=waits[0],
        ledger_wait_s=waits[1],
        prompt_tokens=acc.prompt_tokens,
        completion_tokens=acc.completion_tokens,
        finish_reason=acc.finish_reason,
        correlation_id=correlation_id.get(),
        seats_in_use=seats.in_use,
        seats_total=seats.total,
        stream=stream,
        response_id=acc.response_id,
        response_model=acc.response_model,
        cached_tokens=acc.cached_tokens,
    )


def replica_set(slot: Slot, pipe: Pipe, key: str | None, cooldown_s: float) -> ReplicaSet:
    """The slot's replicas, one per URL, chosen by affinity with a load escape."""
    replicas = [
        Replica(url=url, label=redact_url(url), client=Target.of(pipe, url, key))
        for url in slot.url
    ]
    return ReplicaSet(
        replicas,
        cooldown_s=cooldown_s,
        affinity=slot.affinity != "none",
        # a prefix known cached stays home until its replica has a fair share more
        balance_abs_cached=max(2, slot.parallel // len(replicas)),
    )


def warn_cooling(slot: str, replica: Replica, seconds: float, error: BackendError) -> None:
    log.warning(
        "replica cooling down",
        slot=slot,
        replica=replica.label,
        seconds=round(seconds, 2),
        error=type(error).__name__,
    )


_USAGE = {"include_usage": True}  # usage in the last chunk of a stream


def _throttler(rps: float | None) -> Throttler | None:
    if rps is None:
        return None
    if rps >= 1:
        return Throttler(rate_limit=round(rps), period=1.0)
    return Throttler(rate_limit=1, period=1.0 / rps)


def _clean(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


__all__ = ["CallEvent", "CallResult", "Hook", "Kind", "RetryPolicy", "SlotClient"]
