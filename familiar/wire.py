"""What crosses the wire to LLM servers, in familiar's terms: foreign errors mapped to
the error tree in one place, ``Retry-After`` parsed, and the retry policy.

:func:`map_errors` is the one context manager that turns what the openai SDK and its
HTTP client raise into :mod:`familiar.errors` classes (pattern: httpx's
``map_httpcore_exceptions``), so retry predicates match classes, never messages.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from familiar.errors import (
    BackendConnectError,
    BackendHTTPError,
    BackendProtocolError,
    BackendTimeout,
)
from familiar.logs import mask

# The openai SDK 3.x speaks httpx2 natively (and converts legacy httpx clients on every
# request, which costs ~40% of throughput); older SDKs speak httpx. Use the native one.
HTTP: Any
try:
    import httpx2 as HTTP
except ImportError:  # pragma: no cover - openai < 3
    HTTP = httpx
_TIMEOUT_ERRORS: tuple[type[Exception], ...] = (httpx.TimeoutException, HTTP.TimeoutException)
_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError, HTTP.TransportError)


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
def map_errors(slot: str, replica: str, *, timeout_s: float, stall_s: float) -> Iterator[None]:
    """Raise familiar's error classes for whatever the SDK or HTTP client raised inside.

    ``TimeoutError`` is the whole-request limit (``asyncio.timeout(timeout_s)`` around
    the request); the HTTP client's timeouts are the stall limit. Messages are masked:
    servers echo keys back in errors.
    """
    try:
        yield
    except TimeoutError:  # the whole request (connect to last byte) took too long
        raise BackendTimeout(
            slot, f"no complete answer within timeout_s={timeout_s:g}s", replica=replica
        ) from None
    except openai.APITimeoutError:
        raise BackendTimeout(
            slot, f"no byte for {stall_s:g}s (stall limit) or connect timed out", replica=replica
        ) from None
    except openai.APIConnectionError as exc:
        raise BackendConnectError(
            slot, f"connection failed: {mask(str(exc))}", replica=replica
        ) from None
    except openai.APIStatusError as exc:
        raise BackendHTTPError(
            slot,
            exc.status_code,
            short(mask(exc.message)),
            retry_after=retry_after(exc.response.headers),
            replica=replica,
        ) from None
    except _TIMEOUT_ERRORS:
        raise BackendTimeout(
            slot, f"no byte for {stall_s:g}s mid-answer (stall limit)", replica=replica
        ) from None
    except _TRANSPORT_ERRORS as exc:
        raise BackendConnectError(
            slot, f"transport error: {type(exc).__name__}", replica=replica
        ) from None
    except (openai.APIResponseValidationError, ValueError, KeyError, TypeError) as exc:
        raise BackendProtocolError(
            slot, f"malformed answer: {short(mask(str(exc)))}", replica=replica
        ) from None
