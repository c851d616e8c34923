"""The chunk cache key covers every input that shapes an answer; records and corruption."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from familiar.translate import formats
from familiar.translate import markdown as md
from familiar.translate.batch import BatchOptions, Job, chunk_key, chunk_problems
from familiar.translate.cache import CachedChunk, ChunkCache

CHUNK = md.Chunk(0, "お茶を飲みます。", {}, md.estimate_tokens("お茶を飲みます。"))


def key(
    opts: BatchOptions | None = None,
    *,
    job: Job | None = None,
    model: str = "m",
    max_tokens: int = 2048,
) -> str:
    return chunk_key(
        opts or BatchOptions(to="en", fmt="fewshot"),
        job or Job(CHUNK, "ja", ()),
        model=model,
        max_tokens=max_tokens,
    )


def test_the_same_inputs_give_the_same_key() -> None:
    assert key() == key()


def test_the_fewshot_head_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = key()
    monkeypatch.setattr(formats, "FEWSHOT_HEAD", "Render {src} as {dst}, markers unchanged.")
    assert key() != before


def test_the_fewshot_examples_and_chat_system_are_part_of_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    few, chat = key(), key(BatchOptions(to="en", fmt="chat"))
    examples = {**formats.FEWSHOT_EXAMPLES, ("ja", "en"): (("水", "Water"),)}
    monkeypatch.setattr(formats, "FEWSHOT_EXAMPLES", examples)
    monkeypatch.setattr(formats, "CHAT_SYSTEM", formats.CHAT_SYSTEM + " Be brief.")
    assert key() != few
    assert key(BatchOptions(to="en", fmt="chat")) != chat


@pytest.mark.parametrize(
    "change",
    [
        {"retry_temperature": 0.7},
        {"attempts": 3},
        {"split_depth": 1},
        {"fmt": "chat"},
        {"fmt": "plamo"},
        {"glossary": {"お茶": "tea"}},
    ],
)
def test_options_that_shape_the_answer_change_the_key(change: dict[str, object]) -> None:
    base = BatchOptions(to="en", fmt="fewshot")
    assert key(dataclasses.replace(base, **change)) != key(base)  # type: ignore[arg-type]


def test_options_that_do_not_shape_the_answer_keep_the_key() -> None:
    base = BatchOptions(to="en", fmt="fewshot")
    same = dataclasses.replace(base, force=True, out_dir=Path("elsewhere"), chunk_tokens=99)
    assert key(same) == key(base)


def test_model_context_and_budget_change_the_key() -> None:
    assert key(model="other") != key()
    assert key(job=Job(CHUNK, "ja", (("前", "before"),))) != key()
    assert key(max_tokens=10) != key()  # the token budget sent


def test_finish_reason_other_than_stop_is_a_problem() -> None:
    assert chunk_problems(CHUNK, "I drink tea.", "stop") == []
    for finish in ("length", "content_filter", "tool_calls", None):
        (problem,) = chunk_problems(CHUNK, "I drink tea.", finish)
        assert str(finish) in problem


def test_records_round_trip_and_old_rows_are_ignored(tmp_path: Path) -> None:
    db = tmp_path / "chunks.sqlite"
    with sqlite3.connect(db) as conn:  # a cache of format 1 with a row under the same key
        conn.execute(
            "CREATE TABLE chunks (key TEXT PRIMARY KEY, output TEXT NOT NULL, model TEXT,"
            " created REAL)"
        )
        conn.execute("INSERT INTO chunks VALUES ('k', 'old answer', 'm', 0)")
    conn.close()
    cache = ChunkCache(db)
    try:
        assert cache.get("k") is None and len(cache) == 0
        record = CachedChunk("I drink tea.", "m", "stop", 0.3, 2, 1)
        cache.put("k", record)
        assert cache.get("k") == record and len(cache) == 1
    finally:
        cache.close()


def test_a_file_that_is_not_a_database_is_set_aside(tmp_path: Path) -> None:
    db = tmp_path / "cache" / "chunks.sqlite"
    db.parent.mkdir()
    db.write_bytes(b"\x00garbage" * 100)
    warned: list[str] = []
    cache = ChunkCache(db, warn=warned.append)
    try:
        cache.put("k", CachedChunk("x", "m", "stop", 0.0, 1))
        assert cache.get("k") is not None
    finally:
        cache.close()
    (aside,) = db.parent.glob("chunks.sqlite.corrupt-*")
    assert aside.read_bytes() == b"\x00garbage" * 100
    (message,) = warned
    assert aside.name in message and "\n" not in message
