"""Batches at scale: one long article keeps every seat busy, identical chunks are asked
once, and only a bounded number of articles are in memory at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from familiar.translate import batch
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import ARTICLE, report, report_rows, translate


def long_article(paragraphs: int) -> str:
    body = "\n\n".join(
        f"段落{i}では、ゾルブラットの倉庫{i}番について説明します。" + "詳しい説明です。" * 4
        for i in range(paragraphs)
    )
    return f"# 長い記事\n\n{body}\n"


def slots(tmp_path: Path, url: str, parallel: int) -> None:
    (tmp_path / "slots.toml").write_text(
        f'[slots.translator]\nurl = "{url}"\nmodel = "m"\nruntime = "vllm"\n'
        f"parallel = {parallel}\n"
        f'[slots.naughty]\nurl = "{url}"\nmodel = "m"\nparallel = 1\n'
    )
    (tmp_path / "CLAUDE.md").write_text("familiar: naughty x translator\n")


def user_texts(srv: FakeOpenAIServer) -> list[list[str]]:
    return [
        [m["content"] for m in r["body"]["messages"] if m["role"] == "user"] for r in srv.requests
    ]


async def test_one_long_article_keeps_every_seat_busy_and_comes_back_byte_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAIServer(latency_s=0.05, reply_mode="identity") as srv:
        slots(tmp_path, srv.url, parallel=4)
        src = tmp_path / "src"
        src.mkdir()
        text = long_article(37)
        (src / "long.md").write_text(text, encoding="utf-8")
        out = tmp_path / "out"
        args = (str(src), "--out", str(out), "--json", "--chunk-tokens", "64")
        assert await translate(tmp_path, *args) == 0
        (row,) = report(capsys)
        assert row["status"] == "ok" and isinstance(row["chunks"], int) and row["chunks"] >= 37
        assert srv.stats["requests"] == row["chunks"]
        assert srv.stats["max_in_flight"] == 4  # not one seat: the chunks went out together
        assert (out / "long.md").read_text(encoding="utf-8") == text
        # every chunk after the first carries the first as context, never its predecessor
        first = user_texts(srv)[0][-1]
        for texts in user_texts(srv)[1:]:
            assert texts[0] == first and len(texts) == 2


async def test_identical_chunks_are_asked_once_per_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAIServer(latency_s=0.2, reply_mode="identity") as srv:
        slots(tmp_path, srv.url, parallel=4)
        src = tmp_path / "src"
        src.mkdir()
        article = "# 緑茶\n\nお湯を沸かして、少し冷ましてから茶葉に注ぎます。\n"
        for i in range(10):  # ten copies at once: the cache cannot help, sharing must
            (src / f"copy{i}.md").write_text(article, encoding="utf-8")
        out = tmp_path / "out"
        assert await translate(tmp_path, str(src), "--out", str(out), "--json") == 0
        rows = report(capsys)
        assert {r["status"] for r in rows} == {"ok"}
        chunks = rows[0]["chunks"]
        assert isinstance(chunks, int) and chunks >= 1
        assert srv.stats["requests"] == chunks  # not ten times as many
        assert sum(int(str(r["from_cache"])) for r in rows) == 9 * chunks
        assert {(out / f"copy{i}.md").read_text(encoding="utf-8") for i in range(10)} == {article}


async def test_only_a_bounded_number_of_articles_are_in_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    open_now = 0
    peak = 0
    read, write = batch.read_article, batch.write_article

    def counting_read(path: Path) -> str:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        return read(path)

    def counting_write(path: Path, text: str) -> None:
        nonlocal open_now
        open_now -= 1
        write(path, text)

    monkeypatch.setattr(batch, "read_article", counting_read)
    monkeypatch.setattr(batch, "write_article", counting_write)
    async with FakeOpenAIServer(latency_s=0.01, reply_mode="identity") as srv:
        slots(tmp_path, srv.url, parallel=2)
        src = tmp_path / "src"
        src.mkdir()
        for i in range(40):
            (src / f"a{i:02}.md").write_text(ARTICLE.replace("緑茶", f"緑茶{i}"), "utf-8")
        assert await translate(tmp_path, str(src), "--out", str(tmp_path / "o"), "--json") == 0
    rows = report_rows(capsys.readouterr().out)
    assert len(rows) == 40 and {r["status"] for r in rows} == {"ok"}
    assert peak == 4  # max(4, 2 x 2 seats): not 40
