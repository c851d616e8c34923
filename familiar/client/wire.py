"""What crosses the wire to LLM servers, in familiar's terms: the HTTP client, foreign
errors mapped to the error tree in one place, ``Retry-After`` parsed, and the retry policy.

:func:`map_errors` is the one context manager that turns what the HTTP client raises
(and :class:`Refused`, a status the reader would not take) into :mod:`familiar.errors`
classes (pattern: httpx's ``map_httpcore_exceptions``), so retry predicates match classes,
never messages. Whether a transport error came before the answer's status line or in the
middle of its body is told by the :class:`Sent` the reader marks.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from familiar.errors import (
    BackendConnectError,
    BackendError,
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
)
from familiar.logs import mask

T = TypeVar("T")
log = structlog.get_logger("familiar.client.backend")


class Stalled(Exception):
    """Bytes came, but no line ended for the stall limit (raised by the stream reader)."""


# httpx2: its connection pool stays cheap at hundreds of connections, where httpx 1.x's
# costs ~20 ms of CPU per request at 256 (docs/FLEETCHECK.md); httpx where it is missing.
# benchmarks/stream.py measures it against httpx and aiohttp as SSE readers.
HTTP: Any
try:
    import httpx2 as HTTP
except ImportError:  # pragma: no cover - an install without httpx2
    HTTP = httpx
_TIMEOUT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    HTTP.TimeoutException,
    Stalled,
)
_DECODING_ERRORS: tuple[type[Exception], ...] = (httpx.DecodingError, HTTP.DecodingError)
_REQUEST_ERRORS: tuple[type[Exception], ...] = (httpx.RequestError, HTTP.RequestError)
try:  # familiar.client.transport's default client, where installed
    import aiohttp

    # its read and connect timeouts are TimeoutErrors too: caught before the whole-request one
    _TIMEOUT_ERRORS += (aiohttp.ServerTimeoutError,)
    _REQUEST_ERRORS += (aiohttp.ClientError,)
except ImportError:  # pragma: no cover - httpx2 serves
    pass


class Refused(Exception):
    """The server answered with a status that is not 2xx (raised by the readers, mapped to
    ``BackendHTTPError`` by :func:`map_errors`)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class Sent:
    """Whether the answer's status line has arrived (set by the reader)."""

    __slots__ = ("answered",)

    def __init__(self) -> None:
        self.answered = False


def refusal(status: int, body: bytes, headers: Mapping[str, str]) -> Refused:
    """A refused request as the openai SDK worded it: ``Error code: N - <body>``, the body
    parsed as JSON where it is."""
    text = body.decode("utf-8", "replace").strip()
    try:
        message = f"Error code: {status} - {json.loads(text)}"
    except ValueError:
        message = text or f"Error code: {status}"
    return Refused(status, message, headers)


@dataclass(frozen=True)
class RetryPolicy:
    """How failed attempts are retried. ``sleep`` is injectable so tests take no time."""

    attempts: int = 4
    initial_s: float = 0.5
    max_s: float = 30.0
    cooldown_s: float = 5.0
    max_retry_after_s: float = 120.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff, never shorter than the server's Retry-After
        when that is at most ``max_retry_after_s``; a longer one is not honoured (see
        :meth:`honours`): the attempt is a failed one like any other."""
        ceiling = min(self.max_s, self.initial_s * (2 ** (attempt - 1)))
        wait = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None and self.honours(retry_after):
            wait = max(wait, retry_after)
        return wait

    def honours(self, retry_after: float) -> bool:
        return retry_after <= self.max_retry_after_s


class Backoff:
    """The wait before a slot's next attempt (``RetryPolicy.backoff``); a server's
    ``Retry-After`` is announced (one line per wait, however many requests it answered)
    or, past ``max_retry_after_s``, refused with one warning line for the slot."""

    def __init__(self, retry: RetryPolicy, slot: str) -> None:
        self.retry, self.slot = retry, slot
        self._notice_until = 0.0  # a Retry-After wait already announced lasts till then
        self._long_warned = False

    def wait(self, attempt: int, exc: BaseException | None) -> float:
        ra = exc.retry_after if isinstance(exc, BackendHTTPError) else None
        wait = self.retry.backoff(attempt, ra)
        if ra is None:
            return wait
        if not self.retry.honours(ra):
            if not self._long_warned:
                self._long_warned = True
                log.warning(
                    f"slot {self.slot}: the server asked to wait {ra:.0f}s (Retry-After),"
                    f" longer than max_retry_after_s={self.retry.max_retry_after_s:g};"
                    " counted as a failed attempt instead",
                    slot=self.slot,
                )
            return wait
        now = time.monotonic()
        if wait >= 1.0 and now >= self._notice_until:
            self._notice_until = now + wait
            log.warning(
                f"slot {self.slot}: waiting {wait:.0f}s as the server asked (Retry-After)",
                slot=self.slot,
            )
        return wait


async def with_retries(
    retry: RetryPolicy,
    backoff: Callable[[int, BaseException | None], float],
    attempt: Callable[[int], Awaitable[T]],
) -> T:
    """``attempt(n)`` until it succeeds, ``retry.attempts`` at most, retrying only what is
    worth another attempt (:func:`retryable`), ``backoff(n, error)`` after attempt ``n``."""
    try:  # the fast path: most calls succeed on the first attempt, no retry machinery
        return await attempt(1)
    except BackendError as exc:
        if retry.attempts <= 1 or not retryable(exc):
            raise
        await retry.sleep(backoff(1, exc))

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return backoff(state.attempt_number + 1, exc)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(retry.attempts - 1),
        wait=wait,
        retry=retry_if_exception(retryable),
        sleep=retry.sleep,
        reraise=True,
    )
    async for each in retrying:
        with each:
            return await attempt(each.retry_state.attempt_number + 1)
    raise AssertionError("unreachable: tenacity reraises the last error")


def retryable(exc: BaseException) -> bool:
    """Worth another attempt: connect errors, timeouts, 429, 5xx, malformed answers."""
    if isinstance(exc, BackendHTTPError):
        return exc.retryable
    return isinstance(exc, BackendTimeout | BackendConnectError | BackendProtocolError)


def retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (RFC 9110); None if absent
    or unreadable."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now())


def short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextmanager
def map_errors(
    slot: str, replica: str, *, timeout_s: float, stall_s: float, sent: Sent | None = None
) -> Iterator[None]:
    """Raise familiar's error classes for whatever the HTTP client or reader raised inside.

    ``TimeoutError`` is the whole-request limit (``asyncio.timeout(timeout_s)`` around
    the request); the HTTP client's timeouts are the stall limit. A transport error before
    ``sent.answered`` failed the connection or the request; after it, the answer's body.
    Messages are masked: servers echo keys back in errors.
    """
    try:
        yield
    except _TIMEOUT_ERRORS:
        where = "mid-answer" if sent is not None and sent.answered else "or connect timed out"
        raise BackendTimeout(
            slot,
            f"no byte (or no line end) for {stall_s:g}s (stall limit) {where}",
            replica=replica,
        ) from None
    except TimeoutError:  # the whole request (connect to last byte) took too long
        raise BackendTimeout(
            slot, f"no complete answer within timeout_s={timeout_s:g}s", replica=replica
        ) from None
    except Refused as exc:
        raise BackendHTTPError(
            slot,
            exc.status,
            short(mask(exc.message)),
            retry_after=retry_after(exc.headers),
            replica=replica,
        ) from None
    except _DECODING_ERRORS as exc:
        raise BackendProtocolError(
            slot, f"malformed answer: {short(mask(str(exc)))}", replica=replica
        ) from None
    except _REQUEST_ERRORS as exc:  # connect, read, write, protocol, proxy, bad URL, payload
        if sent is not None and sent.answered:
            raise BackendConnectError(
                slot, f"transport error: {type(exc).__name__}", replica=replica
            ) from None
        reason = short(mask(str(exc) or type(exc).__name__))
        raise BackendConnectError(slot, f"connection failed: {reason}", replica=replica) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendProtocolError(
            slot, f"malformed answer: {short(mask(str(exc)))}", replica=replica
        ) from None
