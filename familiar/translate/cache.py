"""The chunk cache: sqlite under FAMILIAR_HOME, one row per translated chunk.

The key covers everything that changes a translation: the source chunk text, the
model, the prompt format and its version, the languages, the glossary and sampling.
Rows are committed as each chunk finishes, so a killed batch loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any


def cache_key(text: str, **params: Any) -> str:
    blob = json.dumps({"text": text, **params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ChunkCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS chunks (key TEXT PRIMARY KEY, output TEXT NOT NULL,"
            " model TEXT, created REAL)"
        )

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT output FROM chunks WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, output: str, model: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO chunks (key, output, model, created) VALUES (?, ?, ?, ?)",
            (key, output, model, time.time()),
        )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def close(self) -> None:
        self._db.close()
