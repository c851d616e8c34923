"""The chunk cache through `familiar translate`: a new format, records re-checked before
they are served, and a corrupt cache file set aside without failing the batch."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from familiar.translate.cache import TABLE
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import articles, report_rows, translate


def sql(db: Path, statement: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(statement).fetchall()
    conn.close()
    return rows


@dataclass
class Run:
    chunks: int
    from_cache: int
    stderr: str


async def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """Translate ``src/`` to ``o/``: the report's chunk counts, and stderr."""
    src = tmp_path / "src"
    assert await translate(tmp_path, str(src), "--out", str(tmp_path / "o"), "--json") == 0
    captured = capsys.readouterr()
    rows = report_rows(captured.out)
    return Run(
        sum(int(r["chunks"]) for r in rows),
        sum(int(r["from_cache"]) for r in rows),
        captured.err,
    )


async def test_rows_of_the_old_format_are_never_served(
    tmp_path: Path,
    translator: FakeOpenAIServer,
    capsys: pytest.CaptureFixture[str],
    isolated_env: Path,
) -> None:
    articles(tmp_path, 2)
    first = await run(tmp_path, capsys)
    sent = translator.stats["requests"]
    assert sent == first.chunks
    db = isolated_env / "cache" / "chunks.sqlite"
    # the same rows, keys and all, in the table of format 1: not trusted
    sql(
        db,
        "CREATE TABLE IF NOT EXISTS chunks (key TEXT PRIMARY KEY, output TEXT NOT NULL,"
        " model TEXT, created REAL)",
    )
    sql(db, f"INSERT INTO chunks SELECT key, output, model, created FROM {TABLE}")
    sql(db, f"DELETE FROM {TABLE}")
    again = await run(tmp_path, capsys)
    assert again.from_cache == 0 and translator.stats["requests"] == 2 * sent


async def test_records_say_how_the_answer_came_and_are_checked_again(
    tmp_path: Path,
    translator: FakeOpenAIServer,
    capsys: pytest.CaptureFixture[str],
    isolated_env: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    para = "お茶を飲みます。昨日は雨でした。明日は晴れるでしょう。"
    (src / "p.md").write_text(f"# お茶\n\n{para}\n\nお湯を沸かします。\n", encoding="utf-8")
    # chunk after chunk, in order: a rejected first answer, then echoes
    translator.add_replies(["⟦P77⟧"])
    first = await run(tmp_path, capsys)
    db = isolated_env / "cache" / "chunks.sqlite"
    rows = sql(db, f"SELECT finish_reason, temperature, attempt, split FROM {TABLE}")
    assert len(rows) == first.chunks
    assert ("stop", 0.3, 2, 0) in rows  # the retry, at the retry temperature
    assert {r[0] for r in rows} == {"stop"}
    # a record not finished by the server is not served
    sql(db, f"UPDATE {TABLE} SET finish_reason = 'length'")
    sent = translator.stats["requests"]
    again = await run(tmp_path, capsys)
    assert again.from_cache == 0 and translator.stats["requests"] == sent + first.chunks
    # re-asked and stored again: now served
    sent = translator.stats["requests"]
    assert (await run(tmp_path, capsys)).from_cache == first.chunks
    assert translator.stats["requests"] == sent
    # a record that fails today's checks (an invented placeholder) is not served
    sql(db, f"UPDATE {TABLE} SET output = output || ' ⟦P99⟧'")
    again = await run(tmp_path, capsys)
    assert again.from_cache == 0
    assert "P99" not in (tmp_path / "o" / "p.md").read_text(encoding="utf-8")


async def test_a_split_answer_is_recorded_as_split(
    tmp_path: Path,
    translator: FakeOpenAIServer,
    capsys: pytest.CaptureFixture[str],
    isolated_env: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    para = "お茶を飲みます。昨日は雨でした。明日は晴れるでしょう。"
    (src / "p.md").write_text(para + "\n", encoding="utf-8")
    translator.add_replies(["⟦P77⟧", "⟦P77⟧"])  # both whole-chunk attempts fail: split
    assert (await run(tmp_path, capsys)).chunks == 1
    db = isolated_env / "cache" / "chunks.sqlite"
    ((finish, attempt, split),) = sql(db, f"SELECT finish_reason, attempt, split FROM {TABLE}")
    assert (finish, attempt) == ("stop", 2) and split >= 1
    sent = translator.stats["requests"]
    assert (await run(tmp_path, capsys)).from_cache == 1  # passes the checks again
    assert translator.stats["requests"] == sent


@pytest.mark.parametrize("damage", ["garbage", "malformed"])
async def test_a_corrupt_cache_is_set_aside_and_rebuilt(
    tmp_path: Path,
    translator: FakeOpenAIServer,
    capsys: pytest.CaptureFixture[str],
    isolated_env: Path,
    damage: str,
) -> None:
    articles(tmp_path, 2)
    db = isolated_env / "cache" / "chunks.sqlite"
    if damage == "garbage":
        db.parent.mkdir(parents=True)
        bad = b"this is not a database \x00\xff" * 400
    else:  # a real cache whose pages were overwritten after the header
        first = await run(tmp_path, capsys)
        assert first.from_cache == 0
        data = db.read_bytes()
        bad = data[:100] + b"\xa5" * (len(data) - 100)
    db.write_bytes(bad)
    sent = translator.stats["requests"]
    result = await run(tmp_path, capsys)
    err = result.stderr
    warnings = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "chunks.sqlite.corrupt-" in warnings[0], err
    (aside,) = [
        p
        for p in db.parent.glob("chunks.sqlite.corrupt-*")
        if not p.name.endswith(("-wal", "-shm"))
    ]
    assert aside.read_bytes() == bad
    assert result.from_cache == 0 and translator.stats["requests"] == sent + result.chunks
    # the fresh cache works: a rerun asks nothing
    sent = translator.stats["requests"]
    again = await run(tmp_path, capsys)
    assert again.from_cache == result.chunks and translator.stats["requests"] == sent
    assert "warning" not in again.stderr
