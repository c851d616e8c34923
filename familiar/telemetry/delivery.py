"""Delivery of event batches to the receiver: POST with retries, split what is refused.

Connect errors, 5xx and 429 are retried (tenacity), then raised as
``TelemetryUnavailable``; a 400, 413 or other 4xx answer splits the batch, and a single
event still refused is dropped and counted, never retried forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from familiar.errors import TelemetryUnavailable
from familiar.telemetry.events import dumps
from familiar.telemetry.spill import Counts

log = structlog.get_logger("familiar.telemetry")

_Retryable = TelemetryUnavailable


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"HTTP {status}")


def _statuses(by_status: Mapping[int, int]) -> str:
    return ", ".join(f"HTTP {s}" for s in sorted(by_status))


class Delivery:
    """POSTs batches to ``url`` through ``client`` (set by the owner while it is open).

    Adds to the owner's ``counts``: ``sent``, and ``dropped`` and ``refused`` for each
    event refused alone.
    """

    def __init__(self, url: str, attempts: int, counts: Counts) -> None:
        self.url = url
        self.attempts = attempts
        self.counts = counts
        self.client: httpx.AsyncClient | None = None
        self._refused: dict[int, int] = {}  # by HTTP status, since the last warning
        self._unannounced: dict[int, int] = {}  # not yet in a telemetry.dropped event

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        assert self.client is not None
        try:
            resp = await self.client.post(
                self.url, content=dumps(batch), headers={"Content-Type": "application/json"}
            )
        except httpx.TransportError as exc:
            raise _Retryable(str(exc)) from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}")
        if resp.status_code >= 300:
            raise _Refused(resp.status_code)

    async def deliver(self, batch: list[dict[str, Any]]) -> None:
        """POST with retries; split refused batches; drop (and count) a refused single event."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._post(batch)
        except _Refused as refused:
            if len(batch) > 1:
                half = len(batch) // 2
                await self.deliver(batch[:half])
                await self.deliver(batch[half:])
                return
            status = refused.status
            self.counts["dropped"] += 1
            self.counts["refused"] += 1
            self._refused[status] = self._refused.get(status, 0) + 1
            if batch[0].get("event") != "telemetry.dropped":  # never a loop of notices
                self._unannounced[status] = self._unannounced.get(status, 0) + 1
            return
        self.counts["sent"] += len(batch)

    def take_unannounced(self) -> dict[str, Any] | None:
        """The fields of a ``telemetry.dropped`` event for what was refused since the last."""
        if not self._unannounced:
            return None
        count, reason = sum(self._unannounced.values()), _statuses(self._unannounced)
        self._unannounced.clear()
        return {"dropped": count, "reason": reason}

    def warn_refused(self) -> None:
        """One warning line for every event refused since the last one."""
        if self._refused:
            count = sum(self._refused.values())
            log.warning(
                f"telemetry receiver refused {count} event(s) ({_statuses(self._refused)}); "
                "dropped",
                refused=count,
                url=self.url,
            )
            self._refused.clear()
