"""A big article costs time and memory in proportion to its size (issue 20, item 7).

What grew with the square of an article's chunks, each pinned here by a count that the
old code exceeds many times over: every chunk of an article was a task at once (a
32,000-chunk article: 32,000 tasks), each waiting on the board, where every take woke
every waiting put; the language of the article was told from a list of every one of its
characters; an oversized block (a long list) was cut by checking every candidate cut
against every protected span.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from pathlib import Path

import pytest

from familiar.client.backend import SlotClient
from familiar.config.slots import Slot
from familiar.dispatch import Pool, WorkBoard, WorkItem
from familiar.errors import BackendHTTPError
from familiar.lang import detect_lang
from familiar.translate import markdown as md
from familiar.translate.batch import BatchOptions, ChunkOutcome, Job, Translator
from familiar.translate.cache import ChunkCache
from familiar.translate.files import discover
from familiar.translate.report import ArticleReport
from tests.support.fake_openai import FakeOpenAIServer


def long_article(paragraphs: int) -> str:
    body = "\n\n".join(
        f"段落{i}では、倉庫{i}番の[棚](https://example.com/{i})について説明します。"
        for i in range(paragraphs)
    )
    return f"---\ntitle: 長い記事\n---\n\n# 長い記事\n\n{body}\n"


async def test_a_long_article_holds_a_bounded_number_of_chunk_tasks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    text = long_article(300)
    (src / "long.md").write_text(text, encoding="utf-8")
    peak = 0

    def progress(what: str, _n: int) -> None:
        nonlocal peak
        if what == "chunk":
            ours = [
                t
                for t in asyncio.all_tasks()
                if getattr(t.get_coro(), "__qualname__", "").startswith("Translator.")
            ]
            peak = max(peak, len(ours))

    cache = ChunkCache(tmp_path / "cache.sqlite")
    try:
        async with FakeOpenAIServer(reply_mode="identity") as srv:
            slot = Slot(name="translator", url=srv.url, model="m", runtime="vllm", parallel=4)
            async with SlotClient(slot) as client:
                opts = BatchOptions(to="en", out_dir=tmp_path / "out", chunk_tokens=24)
                pools = [Pool("translator", "translator", 4, client)]
                translator = Translator(pools, opts, cache, progress=progress)
                (report,) = await translator.run(discover([src]))
            asked = srv.stats["requests"]
    finally:
        cache.close()
    assert report.status == "ok" and report.chunks > 300 and asked == report.chunks
    assert (tmp_path / "out" / "long.md").read_text(encoding="utf-8") == text
    # one article task, and at most chunks_at_once chunk tasks (was: one per chunk)
    assert 4 <= peak <= translator.chunks_at_once + 1, peak


async def test_a_take_wakes_one_waiting_put_not_all_of_them() -> None:
    board: WorkBoard[int] = WorkBoard(1)
    loop = asyncio.get_running_loop()
    created = 0
    make = loop.create_future

    def counting() -> asyncio.Future[object]:
        nonlocal created
        created += 1
        return make()

    loop.create_future = counting  # type: ignore[method-assign]
    try:
        await board.put(WorkItem("first", "translator", 0))
        putters = [
            asyncio.create_task(board.put(WorkItem(f"i{n}", "translator", n))) for n in range(2000)
        ]
        await asyncio.sleep(0)  # every one of them waits for room now
        created = 0
        taken = [await board.take(["translator"]) for _ in range(200)]
        for _ in range(3):
            await asyncio.sleep(0)
        # 200 takes: a few futures each; a condition's notify_all made 2,000 per take
        assert created < 10 * 200, created
        assert [t.id for t in taken if t] == ["first", *(f"i{n}" for n in range(199))]
        await board.close()
        await asyncio.gather(*putters, return_exceptions=True)
    finally:
        del loop.create_future


def test_detect_lang_of_a_big_text_takes_no_memory_per_character() -> None:
    text = "お湯を沸かして、少し冷ましてから茶葉に注ぎます。Tea time. " * 40_000  # ~2.4 MB
    tracemalloc.start()
    try:
        assert detect_lang(text) == "ja"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak  # a list of every character: about 90 MB
    assert detect_lang("Tea time, with a little お茶 in it, is a fine English sentence.") == "en"


def test_a_long_list_is_chunked_in_time_proportional_to_its_size() -> None:
    items = "".join(
        f"- 項目{i}の説明です。お湯を沸かして、少し冷まします。\n" for i in range(15_000)
    )
    text = "# 一覧\n\n" + items  # one block of 1.2 MB: it must be cut inside
    t0 = time.perf_counter()
    chunking = md.chunk(md.parse(text), 700)
    took = time.perf_counter() - t0
    assert len(chunking) > 400
    assert md.assemble(chunking, {}) == text
    assert took < 20, took  # every cut checked against every span: minutes


async def test_a_failed_article_gives_back_every_chunk_place(tmp_path: Path) -> None:
    """A chunk task cancelled before it ran still frees its place: else every failed
    article would leak places until the batch stood still."""
    cache = ChunkCache(tmp_path / "cache.sqlite")
    try:
        opts = BatchOptions(to="en", out_dir=tmp_path / "out")
        pool = Pool(
            "translator", "translator", 4, SlotClient(Slot(name="t", url="http://x", model="m"))
        )
        translator = Translator([pool], opts, cache)
        chunking = md.chunk(md.parse(long_article(400)), 24)
        jobs = [Job(ch, "ja", ()) for ch in chunking]

        async def chunk(*args: object) -> ChunkOutcome:
            job = args[-1]
            assert isinstance(job, Job)
            await asyncio.sleep(0)
            if job.chunk.index == 150:
                raise BackendHTTPError("t", 500, "gave up")
            return ChunkOutcome("x", ok=True)

        translator._chunk = chunk  # type: ignore[method-assign,assignment]
        for _ in range(3):
            report = ArticleReport(path="a.md")
            with pytest.raises(BackendHTTPError):
                await translator._all(None, 0, Path("a.md"), report, jobs, {})  # type: ignore[arg-type]
            assert translator._under_way._value == translator.chunks_at_once
    finally:
        cache.close()
