"""Running a command's coroutine so that SIGTERM is handled like Ctrl-C.

``asyncio.run`` turns SIGINT into a cancellation of the main task (so ``finally`` blocks
run, state is marked interrupted and buffered telemetry is flushed), but SIGTERM, which
service managers, ``timeout`` and ``kill`` send, would end the process on the spot.
:func:`run` cancels the main task on SIGTERM too and raises :class:`Terminated` once
the cancellation has unwound; the CLI exits with 143 (128 + SIGTERM).

``stop_within_s`` (the worker's) bounds the unwinding: a process whose clean-up hangs (a
connection that never answers, a cancellation swallowed by a library) is ended that many
seconds after SIGTERM or Ctrl-C, with the same exit code, whatever it was waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from familiar.errors import Terminated

T = TypeVar("T")


def _deadline(seconds: float, code: int) -> None:
    """End the process ``seconds`` from now unless it has ended by then (a daemon timer:
    it runs even when the event loop is stuck)."""

    def end() -> None:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"familiar: did not stop within {seconds:g} s; exiting now\n")
            sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(seconds, end)
    timer.daemon = True
    timer.start()


def run(coro: Coroutine[Any, Any, T], *, stop_within_s: float | None = None) -> T:
    """``asyncio.run(coro)``, with SIGTERM cancelling the work as SIGINT does."""
    terminated = interrupted = False

    async def main() -> T:
        nonlocal terminated
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def on_term() -> None:
            nonlocal terminated
            if stop_within_s is not None and not (terminated or interrupted):
                _deadline(stop_within_s, 143)
            terminated = True
            if task is not None:
                task.cancel()

        def on_int() -> None:
            nonlocal interrupted
            if not (terminated or interrupted) and stop_within_s is not None:
                _deadline(stop_within_s, 130)
            interrupted = True
            if task is not None:
                task.cancel()

        installed: list[signal.Signals] = []
        handlers = [(signal.SIGTERM, on_term)]
        if stop_within_s is not None:
            handlers.append((signal.SIGINT, on_int))
        for sig, handler in handlers:
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(sig, handler)  # main thread only
                installed.append(sig)
        try:
            return await coro
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if terminated:
            raise Terminated from None
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    except KeyboardInterrupt:
        if terminated:
            raise Terminated from None
        raise
