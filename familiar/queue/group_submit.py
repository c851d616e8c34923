"""``familiar batch --nats URL``: OpenAI Batch JSONL as request groups on the work queue,
their result lines collected into the local batch's files.

The submitter streams the requests file once more after the up-front checks (memory
holds the groups out on the queue, never the file): a malformed line is written as its
error line at once; the request lines are cut into groups (``groups.cut``: at most
``max_requests`` lines and ``max_bytes`` of text, drawn over every request line so a
rerun cuts where the first run did), and each group's lines still without a result go
out as one job, while at most ``window`` requests are out (a full window waits for
results). Per group, as ``submit.py`` does per article:

* a result already stored under its id with no failure (a killed run's workers finished
  it) is collected at once: nothing is published;
* a stored result with failed requests (status ``partial``) or a failure is purged and the
  group published again with a fresh message id (a rerun asks failed requests again, as a
  local rerun does);
* anything else is published with ``Nats-Msg-Id`` = group id: a group still queued from
  a killed run is not queued twice; a duplicate neither queued nor stored is published
  again with a fresh id.

Collecting: the ``familiar.queue.done.<job>`` hints, a look-up of every group out each
``recheck_s`` and after a reconnect, and every ``lost_check_s`` a group neither queued nor
stored is published again (its lines read again from the file by their offsets). A
result's lines are checked (``batch.lines.read_result``) and appended to ``--out``
(``--errors``) only for the group's own custom ids not written yet, so a group run twice
(a worker that died after storing, a redelivery) never writes a line twice. A stored
failure without lines (a poison group, its text lost) is an error line per request; a
result missing some of its lines sends those again (at most ``MAX_RESENDS`` times). No
result for ``collect_timeout_s``: every request not answered is a ``batch_expired`` error
line (the groups stay queued; a rerun collects them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog
from nats.aio.msg import Msg

from familiar.batch.lines import LineError, ResultLine, custom_id_of, error_line, parse, read_result
from familiar.batch.run import Counts, LineSink, numbered_lines, read_line_at
from familiar.context import correlation_id
from familiar.queue.groups import (
    MAX_BYTES,
    MAX_REQUESTS,
    GroupOptions,
    RequestGroup,
    cut,
    group_id,
    group_text,
    split_text,
)
from familiar.queue.jobs import JobResult, message_id
from familiar.queue.store import CORRELATION, DONE, JOB, SUBJECT, QueueStore

log = structlog.get_logger("familiar.queue")

#: requests out on the queue at once (a full window waits for results)
WINDOW = 4096
#: a group whose result lacks some of its lines sends them again this often, at most
MAX_RESENDS = 3


@dataclass(frozen=True)
class _Line:
    n: int
    offset: int
    raw: bytes
    custom_id: str


@dataclass
class _Out:
    """A group on the queue: its custom ids -> (line number, byte offset)."""

    wanted: dict[str, tuple[int, int]]
    resent: int = 0


@dataclass
class QueueCounts:
    submitted: int = 0  # groups published
    duplicates: int = 0  # groups still queued from an earlier run
    collected_at_once: int = 0  # groups whose result was stored already
    resubmitted: int = 0  # groups lost (neither queued nor stored) or short, sent again
    ignored_lines: int = 0  # result lines not of their group, or not in shape
    most_out: int = 0  # the most requests out on the queue at once (at most the window)

    def fields(self) -> dict[str, Any]:
        return asdict(self)


class ResultLines:
    """The batch's result files as the submitter appends to them: each custom id once,
    counted, progress shown."""

    def __init__(
        self,
        writer: LineSink,
        counts: Counts,
        done: set[str],
        progress: Callable[[Counts], None] | None = None,
    ) -> None:
        self.writer, self.counts = writer, counts
        #: custom ids with a result line (an earlier run's ok lines, then every line written)
        self.done = done
        self.progress = progress or (lambda _c: None)

    def result(self, line: str, got: ResultLine) -> None:
        """A worker's result line, unless its custom id has one already."""
        if got.custom_id in self.done:
            return
        if got.ok:
            self.writer.ok(line)
            self.counts.ok += 1
            self.counts.prompt_tokens += got.prompt_tokens
            self.counts.completion_tokens += got.completion_tokens
        else:
            self.writer.error(line)
            self.counts.failed += 1
        self.done.add(got.custom_id)
        self.progress(self.counts)

    def error(self, custom_id: str, code: str, message: str) -> None:
        self.writer.error(error_line(custom_id, code, message))
        self.counts.failed += 1
        self.done.add(custom_id)
        self.progress(self.counts)


def _reread(path: Path, wanted: dict[str, tuple[int, int]]) -> tuple[list[_Line], list[str]]:
    """The wanted lines read again by their offsets, in file order; and the custom ids
    whose line is not there any more (the file changed during the batch)."""
    lines: list[_Line] = []
    changed: list[str] = []
    with path.open("rb") as fh:
        for cid, (n, offset) in sorted(wanted.items(), key=lambda kv: kv[1]):
            raw = read_line_at(fh, offset)
            if custom_id_of(raw) == cid:
                lines.append(_Line(n, offset, raw, cid))
            else:
                changed.append(cid)
    return lines, changed


class GroupSubmitter:
    """Sends a requests file's groups to the queue and writes their result lines."""

    def __init__(
        self,
        store: QueueStore,
        path: Path,
        opts: GroupOptions,
        writer: LineSink,
        counts: Counts,
        done: set[str],
        *,
        force: bool = False,
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_BYTES,
        window: int = WINDOW,
        progress: Callable[[Counts], None] | None = None,
        recheck_s: float = 5.0,
        lost_check_s: float = 30.0,
        collect_timeout_s: float = 3600.0,
    ) -> None:
        self.store, self.path, self.opts = store, path, opts
        self.counts, self.force = counts, force
        self.lines = ResultLines(writer, counts, done, progress)
        self.done = done  # the custom ids with a result line
        self.max_requests, self.max_bytes, self.window = max_requests, max_bytes, window
        self.recheck_s, self.lost_check_s = recheck_s, lost_check_s
        self.collect_timeout_s = collect_timeout_s
        self.queue = QueueCounts()
        self._out: dict[str, _Out] = {}
        self._in_flight = 0  # requests in the groups out
        self._arrived: set[str] = set()
        self._wake = asyncio.Event()
        self._recheck = True
        clock = self._clock = asyncio.get_running_loop().time
        self._progress_at = self._lost_at = clock()
        self._gave_up = False

    async def run(self) -> Counts:
        self.max_bytes = min(self.max_bytes, self.store.inline_limit // 2)  # JSON escapes
        sub = await self.store.call(
            lambda: self.store.nc.subscribe(f"{DONE}.*", cb=self._on_done), "subscribe"
        )
        try:
            for group in self._groups():
                if self._gave_up:
                    for line in group:
                        self.lines.error(line.custom_id, "batch_expired", _NOT_SENT)
                    continue
                while self._out and self._in_flight + len(group) > self.window:
                    await self._collect(block=True)
                await self._send(group)
                await self._collect(block=False)
            while self._out:
                await self._collect(block=True)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return self.counts

    # -- reading ------------------------------------------------------------------------

    def _groups(self) -> Iterator[list[_Line]]:
        """The groups' lines still without a result; bad lines written on the way."""
        for run in cut(
            self._requests(),
            lambda line: len(line.raw),
            max_requests=self.max_requests,
            max_bytes=self.max_bytes,
        ):
            todo = [line for line in run if line.custom_id not in self.done]
            self.counts.skipped += len(run) - len(todo)
            if todo:
                yield todo

    def _requests(self) -> Iterator[_Line]:
        for n, offset, raw in numbered_lines(self.path):
            item = parse(n, raw)
            if isinstance(item, LineError):
                if item.custom_id in self.done:
                    self.counts.skipped += 1
                else:
                    self.lines.error(item.custom_id, item.code, item.message)
                continue
            yield _Line(n, offset, raw, item.custom_id)

    # -- sending ------------------------------------------------------------------------

    async def _send(self, lines: list[_Line], *, resent: int = 0) -> None:
        text = group_text(line.raw for line in lines)
        job = group_id(text, self.opts)
        self._out[job] = _Out({x.custom_id: (x.n, x.offset) for x in lines}, resent)
        self._in_flight += len(lines)
        self.queue.most_out = max(self.queue.most_out, self._in_flight)
        again = resent > 0
        found = await self.store.result(job)
        if found is not None:
            if found[0].done and not self.force and not again:
                self.queue.collected_at_once += 1
                await self._finish(job, found[0])
                return
            await self.store.forget(job)  # a failure (or --force): asked again
            again = True
        rel = f"{self.path.name} lines {lines[0].n}-{lines[-1].n}"
        group = RequestGroup(job, rel, self.opts, tuple(x.n for x in lines))
        await self._publish(group, text, again)

    async def _publish(self, group: RequestGroup, text: str, again: bool) -> None:
        job = group.job
        msg = RequestGroup(job, group.rel, group.options, group.lines, text=text)
        data = msg.encode()
        if len(data) > self.store.inline_limit:  # over the payload limit: the object store
            name = f"requests.{job}"
            await self.store.put_text(name, text)
            data = RequestGroup(job, group.rel, group.options, group.lines, None, name).encode()
        headers = {
            "Nats-Msg-Id": message_id(job, again),
            JOB: job,
            CORRELATION: correlation_id.get() or "",
        }
        js, subject = self.store.js, f"{SUBJECT}.{job}"
        ack = await self.store.call(lambda: js.publish(subject, data, headers=headers), "submit")
        self._progress_at = self._clock()
        if not ack.duplicate:
            self.queue.submitted += 1
        elif not again and await self._lost(job):  # acked long ago, its result gone since
            self.queue.resubmitted += 1
            await self._publish(group, text, True)
        else:
            self.queue.duplicates += 1

    async def _lost(self, job: str) -> bool:
        """Neither in the stream nor stored (a worker stores before it acks)."""
        return not await self.store.queued(job) and await self.store.result(job) is None

    async def _resend(self, job: str, out: _Out) -> None:
        """The group's lines still wanted, read again from the file, sent again."""
        self._out.pop(job, None)
        self._in_flight -= len(out.wanted)
        if out.resent >= MAX_RESENDS:
            for cid in out.wanted:
                self.lines.error(
                    cid, "failed", f"no result line came back after {out.resent} tries"
                )
            return
        lines, changed = _reread(self.path, out.wanted)
        for cid in changed:
            self.lines.error(cid, "failed", "the requests file changed during the batch")
        if lines:
            self.queue.resubmitted += 1
            await self._send(lines, resent=out.resent + 1)

    # -- collecting ---------------------------------------------------------------------

    async def _on_done(self, msg: Msg) -> None:
        job = msg.subject.rsplit(".", 1)[-1]
        if job in self._out:
            self._arrived.add(job)
            self._wake.set()

    async def _collect(self, *, block: bool) -> None:
        """Look up the groups announced (all of them after a quiet ``recheck_s`` or a
        reconnect) and write their lines; with ``block``, wait for one when none was in."""
        jobs = list(self._out) if self._recheck else [j for j in self._arrived if j in self._out]
        self._recheck = False
        self._arrived.clear()
        finished = 0
        for job in jobs:
            if job in self._out:
                found = await self.store.result(job)
                if found is not None:
                    await self._finish(job, found[0])
                    finished += 1
        if self._clock() - self._lost_at >= self.lost_check_s:
            self._lost_at = self._clock()
            for job in list(self._out):
                if job in self._out and await self._lost(job):
                    log.warning("a group was neither stored nor queued; sending it again", job=job)
                    await self._resend(job, self._out[job])
        if not block or finished or not self._out:
            return
        idle = self._clock() - self._progress_at
        if idle >= self.collect_timeout_s:
            self._give_up()
            return
        self._wake.clear()
        if self._arrived:
            return
        timeout = min(self.recheck_s, self.collect_timeout_s - idle)
        woken = await _first_set(self._wake, self.store.reconnected, timeout)
        self._recheck = woken is not self._wake  # quiet or reconnected: look up them all
        self.store.reconnected.clear()

    async def _finish(self, job: str, result: JobResult) -> None:
        """Write the group's result lines (its own ids, once each); what is missing is
        an error line (a failure without lines) or sent again."""
        out = self._out.pop(job, None)
        if out is None:
            return
        self._in_flight -= len(out.wanted)
        self._progress_at = self._clock()
        problem = ""
        try:
            output = await self.store.output(result)
        except ValueError as exc:  # altered on the bus: never written; asked again next run
            output, problem = None, f"{exc}: rerun to ask again"
            await self.store.forget(job)
        ignored = 0
        for line in split_text(output or ""):
            got = read_result(line)
            if got is None or got.custom_id not in out.wanted:
                ignored += 1
                continue
            del out.wanted[got.custom_id]
            self.lines.result(line, got)  # never a line twice
        if ignored:
            self.queue.ignored_lines += ignored
            log.warning("result lines not of their group, or not in shape: ignored", job=job)
        if not out.wanted:
            return
        if problem or (result.output is None and result.output_object is None):
            why = problem or str(result.report.get("error") or f"the group {result.status}")
            for cid in out.wanted:
                self.lines.error(cid, "failed", why)
            return
        self._out[job] = out  # popped again by _resend
        self._in_flight += len(out.wanted)
        await self._resend(job, out)

    def _give_up(self) -> None:
        log.warning(
            f"no result for {self.collect_timeout_s:g} s (collect_timeout_s); {self._in_flight}"
            " requests not collected: are workers running ('familiar worker --nats URL')?"
            " their groups stay queued: rerun to collect them"
        )
        why = (
            f"no result within collect_timeout_s ({self.collect_timeout_s:g} s); the group"
            " stays queued: rerun to collect it"
        )
        for out in self._out.values():
            for cid in out.wanted:
                self.lines.error(cid, "batch_expired", why)
        self._out.clear()
        self._in_flight = 0
        self._gave_up = True


async def _first_set(a: asyncio.Event, b: asyncio.Event, within_s: float) -> asyncio.Event | None:
    """The first of ``a`` and ``b`` to be set within ``within_s`` (None: neither was)."""
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        done, _ = await asyncio.wait(waits, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    return a if a.is_set() else (b if done else None)


_NOT_SENT = (
    "not submitted: no result came back within collect_timeout_s; are workers running"
    " ('familiar worker --nats URL')? rerun to ask again"
)
