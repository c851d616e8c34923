"""Any batch: OpenAI Batch JSONL through the fleet, streamed.

The input is read twice, line by line, never whole: once for the up-front checks (a
duplicate ``custom_id`` is a usage error before anything is sent), once to send. Lines
go through a bounded queue to worker tasks; every request takes a seat of its slot's
deployment in the ledger (a batch never takes a slot's ``reserve``; sessions go first),
so memory follows the work in flight, not the file. Each result line is appended and
flushed as its answer finishes. A rerun keeps the successful lines already written (a
torn last line is cut off), drops the old error lines, and asks only for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import jsonschema

from familiar.batch.lines import (
    LineError,
    Request,
    custom_id_of,
    done_id,
    error_line,
    line_id,
    ok_line,
    parse,
)
from familiar.client.backend import CallResult, SlotClient
from familiar.errors import BackendError, ConfigError, FamiliarError, StateError

_STOP = object()


@dataclass
class Counts:
    total: int = 0
    skipped: int = 0  # already answered in an earlier run
    ok: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def summary(self) -> dict[str, Any]:
        took = time.monotonic() - self.started
        return {
            "requests": self.total,
            "already_done": self.skipped,
            "ok": self.ok,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(took, 2),
            "requests_per_s": round(self.done / took, 2) if took > 0 else None,
        }


def numbered_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """The non-blank lines of ``path``: (1-based line number, byte offset, raw bytes), read
    one at a time (the offset finds a line again: ``read_line_at``)."""
    offset = 0
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            if raw.strip():
                yield n, offset, raw
            offset += len(raw)


def read_line_at(fh: BinaryIO, offset: int) -> bytes:
    """The line that starts at ``offset`` of an open requests file."""
    fh.seek(offset)
    return fh.readline()


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    for n, _offset, raw in numbered_lines(path):
        yield n, raw


def check_input(path: Path) -> int:
    """Count the requests and refuse duplicate custom ids (ConfigError, nothing sent)."""
    seen: dict[str, int] = {}
    unnamed: list[int] = []  # lines without an id of their own: named line-<n> in results
    count = 0
    try:
        for n, raw in _lines(path):
            count += 1
            cid = custom_id_of(raw)
            if cid is None:
                unnamed.append(n)
                continue
            if cid in seen:
                raise ConfigError(
                    f"{path}: custom_id {cid!r} is on line {seen[cid]} and line {n};"
                    " every request needs its own id (nothing was sent)"
                )
            seen[cid] = n
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if count == 0:
        raise ConfigError(f"{path} holds no request lines")
    for n in unnamed:
        if line_id(n) in seen:
            raise ConfigError(
                f"{path}: line {seen[line_id(n)]} uses the custom_id {line_id(n)!r}, the name"
                f" familiar gives bad line {n}; rename it (nothing was sent)"
            )
    return count


def _result_lines(path: Path) -> Iterator[tuple[bytes, tuple[str, bool]]]:
    """The result lines of an earlier run in ``path`` (a torn last line left out);
    ConfigError when a line is none (a user's file: never overwritten)."""
    try:
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    return  # torn by a kill mid-write: asked again
                found = done_id(raw)
                if found is None and raw.strip():
                    raise ConfigError(
                        f"{path}: line {n} is not a result line of familiar batch; the file"
                        " is left as it is (give another file, or --force to empty it)"
                    )
                if found is not None:
                    yield raw, found
    except OSError as exc:
        raise StateError(f"cannot read the results {path}: {exc.strerror or exc}") from None


def _keep_ok_lines(path: Path) -> set[str]:
    """The custom ids already answered in ``path``; the file rewritten with only those
    lines (a torn last line and old error lines dropped, so they are asked again)."""
    if not path.exists():
        return set()
    done: set[str] = set()
    kept: list[bytes] = []
    for raw, (cid, ok) in _result_lines(path):
        if ok and cid not in done:
            done.add(cid)
            kept.append(raw)
    # a fresh name beside it (a user's "OUT.tmp" is never overwritten)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.writelines(kept)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(name, path.stat().st_mode & 0o777)  # the file's own mode kept
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return done


class LineSink(Protocol):
    """Where a batch's result lines go: ``ok`` and ``error`` lines (JSON, no newline)."""

    def ok(self, line: str) -> None: ...

    def error(self, line: str) -> None: ...


class KeptLines:
    """Result lines kept in memory, in finishing order (a queue worker's request group)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def ok(self, line: str) -> None:
        self.lines.append(line)

    def error(self, line: str) -> None:
        self.lines.append(line)


class Writer:
    """Result lines appended and flushed as they finish (errors apart when asked)."""

    def __init__(self, out: Path, errors: Path | None) -> None:
        self._out: BinaryIO = out.open("ab")
        self._err: BinaryIO | None = errors.open("ab") if errors is not None else None

    def ok(self, line: str) -> None:
        self._write(self._out, line)

    def error(self, line: str) -> None:
        self._write(self._err or self._out, line)

    @staticmethod
    def _write(fh: BinaryIO, line: str) -> None:
        fh.write(line.encode("utf-8") + b"\n")
        fh.flush()

    def close(self) -> None:
        self._out.close()
        if self._err is not None:
            self._err.close()


def _schema_problem(req: Request, text: str) -> str | None:
    schema = req.schema
    if schema is None:
        return None
    try:
        jsonschema.validate(json.loads(text), schema)
    except ValueError:
        return "the answer is not JSON, though the request asked for a JSON schema"
    except jsonschema.ValidationError as exc:
        return f"the answer does not follow the request's JSON schema: {exc.message}"
    except jsonschema.SchemaError as exc:
        return f"the request's JSON schema is invalid: {exc.message}"
    return None


async def _ask(client: SlotClient, req: Request) -> CallResult:
    params = req.params()
    if req.kind == "chat":
        messages = params.pop("messages")
        return await client.chat(messages, role="batch", **params)
    prompt = params.pop("prompt")
    return await client.complete(prompt, role="batch", **params)


@dataclass
class BatchRun:
    """One batch: ``clients`` by slot name, ``route(request)`` -> a slot name (or raises
    ConfigError for that line), results to ``writer``."""

    clients: Mapping[str, SlotClient]
    route: Callable[[Request], str]
    writer: LineSink
    correlation_id: str
    counts: Counts = field(default_factory=Counts)
    on_progress: Callable[[Counts], None] | None = None

    def _record_error(self, custom_id: str, code: str, message: str) -> None:
        self.writer.error(error_line(custom_id, code, message))
        self.counts.failed += 1

    async def one(self, item: Request | LineError) -> None:
        if isinstance(item, LineError):
            self._record_error(item.custom_id, item.code, item.message)
            return
        try:
            name = self.route(item)
        except ConfigError as exc:
            self._record_error(item.custom_id, "model_not_found", str(exc))
            return
        try:
            result = await _ask(self.clients[name], item)
        except BackendError as exc:
            self._record_error(item.custom_id, type(exc).__name__, str(exc))
            return
        except FamiliarError as exc:
            self._record_error(item.custom_id, "failed", str(exc))
            return
        if result.finish_reason == "length":
            tokens = result.completion_tokens
            self._record_error(
                item.custom_id, "length", f"the answer was cut off at max_tokens ({tokens})"
            )
            return
        problem = _schema_problem(item, result.text)
        if problem is not None:
            self._record_error(item.custom_id, "schema", problem)
            return
        line = ok_line(item, result, self.correlation_id)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # "\ud800" alone in the server's JSON: no text
            self._record_error(
                item.custom_id, "malformed", "the answer holds a lone surrogate: not UTF-8 text"
            )
            return
        self.writer.ok(line)
        self.counts.ok += 1
        self.counts.prompt_tokens += result.prompt_tokens or 0
        self.counts.completion_tokens += result.completion_tokens or 0

    async def run(self, path: Path, done: set[str], workers: int) -> Counts:
        """Every request of ``path`` not in ``done``, ``workers`` at a time."""
        return await self.run_lines(_lines(path), done, workers)

    async def run_lines(
        self, lines: Iterable[tuple[int, bytes | str]], done: set[str], workers: int
    ) -> Counts:
        """Every request of ``lines`` ((line number, raw line)) not in ``done``,
        ``workers`` at a time."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=workers * 2)

        async def work() -> None:
            while (item := await queue.get()) is not _STOP:
                await self.one(item)
                if self.on_progress is not None:
                    self.on_progress(self.counts)

        async with asyncio.TaskGroup() as tg:
            for _ in range(workers):
                tg.create_task(work())
            for n, raw in lines:
                item = parse(n, raw)
                if item.custom_id in done:
                    self.counts.skipped += 1
                    continue
                await queue.put(item)
            for _ in range(workers):
                await queue.put(_STOP)
        return self.counts


def check_outputs(out: Path, errors: Path | None) -> None:
    """Results files that can be written: regular files (or new) in existing directories."""
    for p in (out, errors):
        if p is None:
            continue
        if p.exists() and not p.is_file():  # a directory, a FIFO (would block), a device
            raise ConfigError(f"{p} is not a regular file: results go to a file")
        if not p.parent.is_dir():
            raise ConfigError(f"{p}: the directory {p.parent} does not exist")


def prepare_output(out: Path, errors: Path | None, *, force: bool) -> set[str]:
    """The ids already answered (a resume), or none with ``force`` (files emptied)."""
    check_outputs(out, errors)
    if force:
        for p in (out, errors):
            if p is not None and p.exists():
                p.write_bytes(b"")
        return set()
    if errors is not None and errors.exists():
        for _line in _result_lines(errors):  # a user's file: refused before any change
            pass
    done = _keep_ok_lines(out)
    if errors is not None and errors.exists():
        errors.write_bytes(b"")  # old errors are asked again
    return done


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """The results file ``out`` claimed by this run (an exclusive ``flock`` on
    ``.OUT.lock`` beside it, kept for the next run): a second batch writing the same file
    at once is refused (ConfigError), else both would write every line (and one's reset of
    the file would drop the other's lines)."""
    lock = out.with_name(f".{out.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:  # a read-only directory: the run fails on the results file itself
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{out}: another familiar batch is writing these results now; wait for it"
                " (a rerun after it asks only what has no line) or give another --out"
            ) from None
        yield
    finally:
        os.close(fd)
