"""The chunk cache: sqlite under FAMILIAR_HOME, one row per translated chunk.

The key is a hash of everything that shapes an answer: the whole first request as it
is sent (prompt or messages: instructions, few-shot head and examples, glossary, the
previous chunk pair, the chunk itself; sampling, stop strings, the token budget), the
model and the retry schedule (attempts, retry temperature, split depth). Each row keeps
how its answer came about (finish_reason, temperature, attempt, split), and the batch
serves a row only if it passes today's checks again. Rows are committed as each chunk
finishes, so a killed batch loses nothing.

``CACHE_FORMAT`` names the table: rows of earlier formats (the ``chunks`` table of
format 1) are never read. A file that is not a sqlite database, a malformed one, or one
whose table lacks a column this format needs, is set aside as
``<name>.corrupt-<timestamp>`` with a warning, and a fresh cache is built. Any other
sqlite or file error (the path is a directory, a read-only directory or file, a lock
held longer than ``busy_s``) is one warning, and the batch goes on without a cache: a
cache never fails a batch. A new cache file gets the umask's mode (sqlite alone would
make it 0644).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from familiar.translate.formats import Request

log = structlog.get_logger("familiar.translate")

CACHE_FORMAT = 2
TABLE = f"chunks_v{CACHE_FORMAT}"
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_COLUMNS = {"key", "output", "model", "finish_reason", "temperature", "attempt", "split", "created"}


class _WrongShape(sqlite3.DatabaseError):
    """The cache table exists without the columns this format needs."""


T = TypeVar("T")


def cache_key(request: Request, **inputs: Any) -> str:
    """A hash of the canonical JSON of ``request`` and the other ``inputs`` (model, retries)."""
    blob = {
        "cache_format": CACHE_FORMAT,
        "request": {
            "kind": request.kind,
            "prompt": request.prompt,
            "messages": [dict(m) for m in request.messages],
            "params": dict(request.params or {}),
        },
        **inputs,
    }
    text = json.dumps(blob, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedChunk:
    """A finished chunk and how it was obtained."""

    output: str
    model: str
    finish_reason: str | None
    temperature: float | None  # of the attempt whose answer this is (max over split parts)
    attempt: int  # 1-based attempt of the whole chunk; after splitting: attempts made first
    split: int = 0  # how many splits produced it (0: one answer)


def _corrupt(exc: BaseException) -> bool:
    if isinstance(exc, _WrongShape):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return code in _CORRUPT or (code is None and type(exc) is sqlite3.DatabaseError)


class ChunkCache:
    """The cache; ``disabled`` (and a warning said why) when it could not be used."""

    def __init__(
        self, path: Path, *, warn: Callable[[str], None] | None = None, busy_s: float = 2.0
    ) -> None:
        self.path = path
        self.busy_s = busy_s
        self._warn = warn or (lambda message: log.warning(message))
        self._db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._open_or_set_aside()
        except (sqlite3.Error, OSError) as exc:
            self._disable(exc)

    @property
    def disabled(self) -> bool:
        return self._db is None

    def _disable(self, exc: BaseException) -> None:
        """Go on without a cache (one warning): nothing is read or kept from now on."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        self._warn(f"chunk cache {self.path} cannot be used ({reason}); going on without it")

    def _create(self) -> None:
        """A new cache file with the umask's mode (sqlite would create it 0644)."""
        if self.path.exists() or self.path.is_symlink():
            return
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))

    def _open(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise sqlite3.OperationalError("it is a directory")
        self._create()
        db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_s
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, output TEXT NOT NULL,"
                " model TEXT, finish_reason TEXT, temperature REAL, attempt INTEGER,"
                " split INTEGER, created REAL)"
            )
            columns = {str(row[1]) for row in db.execute(f"PRAGMA table_info({TABLE})")}
            if not _COLUMNS <= columns:
                missing = ", ".join(sorted(_COLUMNS - columns))
                raise _WrongShape(f"table {TABLE} lacks column(s) {missing}")
            db.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _open_or_set_aside(self) -> sqlite3.Connection:
        try:
            return self._open()
        except sqlite3.DatabaseError as exc:
            if not _corrupt(exc):
                raise
            self._set_aside(exc)
            return self._open()

    def _set_aside(self, exc: BaseException) -> None:
        """Rename the corrupt file (and its -wal/-shm files) out of the way, warn once."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                side.rename(target.with_name(target.name + suffix))
        self._warn(
            f"chunk cache {self.path} is unreadable ({exc}); set aside as {target.name},"
            " starting a fresh cache"
        )

    def _guard(self, op: Callable[[sqlite3.Connection], T], default: T) -> T:
        """Run ``op``; a database found corrupt mid-run is set aside and rebuilt once; any
        other failure disables the cache (``default`` returned)."""
        if self._db is None:
            return default
        try:
            return op(self._db)
        except (sqlite3.Error, OSError) as exc:
            if not _corrupt(exc):
                self._disable(exc)
                return default
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
            try:
                self._set_aside(exc)
                self._db = self._open()
                return op(self._db)
            except (sqlite3.Error, OSError) as again:
                self._disable(again)
                return default

    def get(self, key: str) -> CachedChunk | None:
        row = self._guard(
            lambda db: db.execute(
                "SELECT output, model, finish_reason, temperature, attempt, split"
                f" FROM {TABLE} WHERE key = ?",
                (key,),
            ).fetchone(),
            None,
        )
        if row is None:
            return None
        output, model, finish, temperature, attempt, split = row
        return CachedChunk(
            str(output),
            str(model or ""),
            None if finish is None else str(finish),
            None if temperature is None else float(temperature),
            int(attempt or 0),
            int(split or 0),
        )

    def put(self, key: str, chunk: CachedChunk) -> None:
        try:
            # bound as UTF-8 bytes, cast back to text: binding the str itself makes sqlite3
            # keep a UTF-8 copy inside it for as long as it lives (the whole batch)
            output = chunk.output.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: not text sqlite can give back
            return
        values = (
            key,
            output,
            chunk.model,
            chunk.finish_reason,
            chunk.temperature,
            chunk.attempt,
            chunk.split,
            time.time(),
        )
        self._guard(
            lambda db: db.execute(
                f"INSERT OR REPLACE INTO {TABLE} (key, output, model, finish_reason, temperature,"
                " attempt, split, created) VALUES (?, CAST(? AS TEXT), ?, ?, ?, ?, ?, ?)",
                values,
            ),
            None,
        )

    def __len__(self) -> int:
        row = self._guard(lambda db: db.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone(), None)
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
