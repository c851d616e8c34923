"""Cancel the request on a seat the moment the ledger says the seat is lost.

A lease can be lost: a NATS-ledger holder paused (SIGSTOP, a VM frozen, a long GC) or cut
off for longer than the seat's TTL finds its seat expired and taken by another process.
Its request must stop at once, or the deployment serves one request more than its cap.
:class:`SeatGuard` works as ``asyncio.timeout`` does: the ledger resolves the lease's
*lost* future, the guard cancels the task running the block, and the cancellation leaves
the block as :class:`~familiar.errors.SeatLost` (closing the stream aborts the request
on vLLM, llama-server and SGLang). Any other cancellation passes through untouched.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from familiar.errors import SeatLost

__all__ = ["SeatGuard"]


class SeatGuard:
    """``async with SeatGuard(lost, what):`` -- the block, cut short if ``lost`` resolves."""

    def __init__(self, lost: asyncio.Future[None] | None, what: str = "the seat") -> None:
        self._lost = lost
        self._what = what
        self._task: asyncio.Task[object] | None = None
        self._active = self._fired = False

    async def __aenter__(self) -> SeatGuard:
        if self._lost is None:
            return self
        if self._lost.done():
            raise SeatLost(f"{self._what} was lost before its request started")
        self._task = asyncio.current_task()
        self._active = True
        self._lost.add_done_callback(self._fire)
        return self

    def _fire(self, _future: object) -> None:
        if self._active and self._task is not None:
            self._fired = True
            self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._active = False
        if self._lost is not None:
            self._lost.remove_done_callback(self._fire)
        if self._fired and self._task is not None:
            # ours, and no other cancellation pending: the block ends as SeatLost
            if self._task.uncancel() == 0 and exc_type is asyncio.CancelledError:
                raise SeatLost(f"{self._what} was lost; its request was cancelled") from exc
