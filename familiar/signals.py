"""Running a command's coroutine so that SIGTERM is handled like Ctrl-C.

``asyncio.run`` turns SIGINT into a cancellation of the main task (so ``finally`` blocks
run, state is marked interrupted and buffered telemetry is flushed), but SIGTERM, which
service managers, ``timeout`` and ``kill`` send, would end the process on the spot.
:func:`run` cancels the main task on SIGTERM too and raises :class:`Terminated` once
the cancellation has unwound; the CLI exits with 143 (128 + SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

from familiar.errors import Terminated

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, with SIGTERM cancelling the work as SIGINT does."""
    terminated = False

    async def main() -> T:
        nonlocal terminated
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def on_term() -> None:
            nonlocal terminated
            terminated = True
            if task is not None:
                task.cancel()

        installed = False
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signal.SIGTERM, on_term)  # main thread only
            installed = True
        try:
            return await coro
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if terminated:
            raise Terminated from None
        raise
    except KeyboardInterrupt:
        if terminated:
            raise Terminated from None
        raise
