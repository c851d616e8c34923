"""Progress of a translation batch without a terminal: plain lines on stderr.

A log, a pipe or a cron mail gets one line per finished article (with its status, chunks
and time), a line every ``CHUNK_LINE_EVERY`` chunks while no article finishes (one long
article), the jobs submitted and collected with ``--nats``, and a heartbeat at least
every ``heartbeat_s`` seconds (``FAMILIAR_HEARTBEAT_S``, default 30) with the counts and
the rates, so a long batch is never silent. The events are the batch's ``progress``
callback's: ``article``, ``chunks-total``, ``chunk``, ``tokens``, and with ``--nats``
``submitted`` (a job published) and ``queued`` (all published; n jobs to collect).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from familiar.errors import ConfigError

CHUNK_LINE_EVERY = 50
DEFAULT_HEARTBEAT_S = 30.0


def heartbeat_seconds() -> float:
    """``FAMILIAR_HEARTBEAT_S`` (seconds above 0), else 30."""
    text = os.environ.get("FAMILIAR_HEARTBEAT_S", "").strip()
    if not text:
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"FAMILIAR_HEARTBEAT_S: {text!r} is not a number") from None
    if not value > 0:
        raise ConfigError(f"FAMILIAR_HEARTBEAT_S: must be above 0, not {text}")
    return value


def _short(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _elapsed(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class PlainProgress:
    """The batch's ``progress`` callback for a stream that is not a terminal.

    ``reports`` is the batch's list of article reports: a finished article's line is
    taken from its report (path, status, chunks, time; the first line of its error).
    Use as a context manager inside the running loop (it runs the heartbeat task).
    """

    def __init__(
        self,
        reports: Sequence[Any],
        *,
        stream: TextIO | None = None,
        heartbeat_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        what: str = "translate",
    ) -> None:
        self.reports = reports
        self.stream = stream or sys.stderr
        self.heartbeat_s = heartbeat_seconds() if heartbeat_s is None else heartbeat_s
        self.clock = clock
        self.what = what
        self.t0 = clock()
        self.articles_done = 0
        self.chunks_total = 0
        self.chunks_done = 0
        self.tokens = 0
        self.submitted = 0
        self._told: set[int] = set()  # reports already announced (by id)
        self._chunks_at_last_line = 0
        self._last_beat = self.t0
        self._beat: asyncio.Task[None] | None = None

    # -- the callback ----------------------------------------------------------------

    def __call__(self, what: str, n: int) -> None:
        if what == "article":
            self.articles_done += n
            self._finished_articles()
        elif what == "chunks-total":
            self.chunks_total += n
        elif what == "chunk":
            self.chunks_done += n
            if self.chunks_done - self._chunks_at_last_line >= CHUNK_LINE_EVERY:
                self._line(f"chunks {self.chunks_done}/{self.chunks_total} done ({self._rates()})")
                self._chunks_at_last_line = self.chunks_done
        elif what == "tokens":
            self.tokens += n
        elif what == "submitted":
            self.submitted += n
            if self.submitted % CHUNK_LINE_EVERY == 0:
                self._line(f"jobs submitted: {self.submitted} so far")
        elif what == "queued":  # every article is submitted (n: the jobs waited for)
            self._line(
                f"jobs submitted: {self.submitted} ({n} to collect, {self.articles_done}"
                f" of {len(self.reports)} articles done already); collecting ..."
            )

    def _finished_articles(self) -> None:
        total = len(self.reports)
        for report in self.reports:
            if report.status == "pending" or id(report) in self._told:
                continue
            self._told.add(id(report))
            why = f": {_short(report.error)}" if report.error else ""
            failed = len(report.failed_chunks)
            chunks = f"{report.chunks} chunks" + (f", {failed} failed" if failed else "")
            self._line(
                f"[{len(self._told)}/{total}] {report.status} {report.path}"
                f" ({chunks}, {report.seconds:.1f} s){why}"
            )
        self._chunks_at_last_line = self.chunks_done

    # -- the heartbeat ---------------------------------------------------------------

    def _rates(self) -> str:
        took = max(self.clock() - self.t0, 1e-6)
        return (
            f"{self.chunks_done / took:.2f} chunks/s, {self.tokens / took:.1f} tok/s,"
            f" {_elapsed(took)} elapsed"
        )

    def heartbeat_line(self) -> str:
        jobs = (
            f"jobs submitted {self.submitted}, collected {self.articles_done}; "
            if self.submitted
            else ""
        )
        return (
            f"{jobs}articles {self.articles_done}/{len(self.reports)} done,"
            f" chunks {self.chunks_done}/{self.chunks_total} ({self._rates()})"
        )

    def _line(self, text: str) -> None:
        print(f"familiar: {self.what}: {text}", file=self.stream, flush=True)

    async def _heartbeat(self) -> None:
        while True:
            wait = self._last_beat + self.heartbeat_s - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._last_beat = self.clock()
            self._line(self.heartbeat_line())

    def __enter__(self) -> PlainProgress:
        self.t0 = self._last_beat = self.clock()
        self._beat = asyncio.get_running_loop().create_task(self._heartbeat())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(BaseException):
                # let it finish on the loop's next turn (nothing waits for it)
                self._beat.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._beat = None
