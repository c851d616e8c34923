"""``signals.run(..., stop_within_s=S)`` (the worker's): a process whose clean-up hangs or
swallows the cancellation still ends S seconds after SIGTERM or Ctrl-C, with 143 / 130."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

STUBBORN = """
import asyncio, sys
from familiar.cli import signals

async def stubborn() -> None:
    print("ready", flush=True)
    while True:  # swallows every cancellation, as a library's wait_for can on 3.11
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

signals.run(stubborn(), stop_within_s=1.0)
"""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stubborn_process_still_stops_within_the_bound(sig: signal.Signals, code: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    started = time.monotonic()
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert 0.9 < time.monotonic() - started < 5
    assert b"did not stop within 1 s" in err
