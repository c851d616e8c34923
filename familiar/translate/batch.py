"""Translation batches: articles -> chunks -> cache / translator seats -> validated -> written.

Memory follows the work in flight, not the batch: the list of files is known up front
(paths only: the safety checks need it before anything is written), but only a bounded
number of articles (``articles_at_once``, enough to keep every seat busy) are read,
parsed and translated at once; a finished article leaves memory.

Within an article, the first chunk is asked alone; every other chunk then goes out
(at most ``chunks_at_once`` of the batch under way, so a 30,000-chunk article is not
30,000 tasks; the dispatcher's bounded board and the seats pace them) with the first
chunk and its translation as context (the *anchor*: title and lead, which fix names and terms for
the rest). The anchor, unlike "the previous chunk's translation", does not make chunk
``i`` wait for chunk ``i-1``, so one long article keeps every seat busy; the cost is
that a chunk no longer sees its immediate predecessor's translation. Identical chunks
(same request: text, anchor, languages, glossary, format) are asked once per batch:
a chunk already in flight is waited for, and the cache serves it across batches.

Each chunk is validated (placeholders back exactly once, finish_reason ``stop``, sane
length ratio, no runaway repetition); a bad chunk is retried, then split smaller, then
marked failed with its source text kept and flagged. Finished chunks are cached in
sqlite as they arrive, and a cached chunk is served only if it passes the same checks
again; each article is written atomically as soon as its chunks are done.

An article that cannot be read or written is that article's error (``ArticleError``);
a backend that gives up fails that article; anything else is a bug and stops the
batch. ``article.finished`` and ``batch.end`` always carry an honest status
(``interrupted`` when the batch is cancelled).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import structlog

from familiar.client.backend import SlotClient
from familiar.context import bound_affinity
from familiar.dispatch import Dispatcher, Pool, WorkItem
from familiar.errors import ArticleError, BackendError, FamiliarError, LedgerUnavailable
from familiar.lang import detect_lang
from familiar.telemetry import Telemetry
from familiar.translate import markdown as md
from familiar.translate.asking import AsyncChunkCache, ChunkAsker
from familiar.translate.cache import ChunkCache
from familiar.translate.chunks import (
    BatchOptions,
    ChunkOutcome,
    ChunkTranslator,
    Job,
    chunk_key,
)
from familiar.translate.files import output_path, read_article, write_article
from familiar.translate.glossary import misses
from familiar.translate.markdown import chunk_problems, markup_problems
from familiar.translate.report import ArticleReport

__all__ = [
    "ArticleReport",
    "BatchOptions",
    "ChunkOutcome",
    "Job",
    "Translator",
    "chunk_key",
    "chunk_problems",
    "markup_problems",
    "settle_article",
]

log = structlog.get_logger("familiar.translate")

Progress = Callable[[str, int], None]  # (what, amount): "chunk", "article", "tokens"


class Translator:
    """Runs one batch over a translator client (or several replicas' pools)."""

    def __init__(
        self,
        pools: Sequence[Pool],
        opts: BatchOptions,
        cache: ChunkCache | AsyncChunkCache,
        *,
        telemetry: Telemetry | None = None,
        progress: Progress | None = None,
        articles_at_once: int | None = None,
    ) -> None:
        self.pools = list(pools)
        seats = sum(p.seats for p in self.pools)
        #: articles read, parsed and translated at once (the rest wait on disk)
        self.articles_at_once = articles_at_once or max(4, 2 * seats)
        #: chunks of the batch under way at once (cache look-up, board, seat): the rest wait
        self.chunks_at_once = max(16, 4 * seats)
        self._under_way = asyncio.Semaphore(self.chunks_at_once)
        self.opts = opts
        self.cache = cache
        self.telemetry = telemetry
        self.progress = progress or (lambda _what, _n: None)
        client: SlotClient = self.pools[0].client
        self.model = client.slot.model
        self.max_tokens = client.slot.max_tokens or 2048
        self.chunks = ChunkTranslator(opts, self.max_tokens)
        self.asker = ChunkAsker(
            opts, cache, self.chunks, model=self.model, max_tokens=self.max_tokens
        )

    def _emit(self, name: str, fields: Mapping[str, Any]) -> None:
        if self.telemetry is not None:
            self.telemetry.emit(name, fields)

    async def run(
        self, files: Sequence[tuple[Path, Path]], reports: list[ArticleReport] | None = None
    ) -> list[ArticleReport]:
        """Translate ``files``; ``reports`` (one per file, filled in place) may be given."""
        if reports is None:
            reports = [ArticleReport(path=str(f)) for f, _ in files]
        self._emit(
            "batch.start",
            {
                "articles": len(files),
                "to": self.opts.to,
                "format": self.opts.fmt,
                "model": self.model,
            },
        )
        started = time.monotonic()
        status = "failed"
        try:
            todo = enumerate(zip(files, reports, strict=True))
            try:
                async with Dispatcher(self.pools, self._handle) as dispatcher:
                    async with asyncio.TaskGroup() as tg:
                        for _ in range(min(self.articles_at_once, len(files))):
                            tg.create_task(self._articles(dispatcher, todo))
            except ExceptionGroup as group:  # e.g. the seat ledger gone: say that
                raise _one_failure(group) from None
            status = "ok" if all(r.status in ("ok", "skipped") for r in reports) else "failed"
        except asyncio.CancelledError:
            status = "interrupted"
            raise
        finally:
            for r in reports:
                if r.status == "pending":  # never started: the batch stopped first
                    r.status = "interrupted"
            self._emit(
                "batch.end",
                {
                    "status": status,
                    "articles": len(reports),
                    "failed": sum(r.status in ("failed", "error") for r in reports),
                    "interrupted": sum(r.status == "interrupted" for r in reports),
                    "duration_ms": round((time.monotonic() - started) * 1000),
                },
            )
        return reports

    async def _articles(
        self,
        dispatcher: Dispatcher[Job, ChunkOutcome],
        todo: Iterator[tuple[int, tuple[tuple[Path, Path], ArticleReport]]],
    ) -> None:
        """One of ``articles_at_once`` workers: the next article, until none is left."""
        for n, ((src, rel), report) in todo:
            work = self._translate_article(dispatcher, n, src, rel, report)
            await settle_article(rel, report, work, progress=self.progress, emit=self._emit)

    async def translate_text(self, text: str, rel: Path, report: ArticleReport) -> str | None:
        """One article's text, no files read or written: the translation (None when the
        article is skipped or its translator gave up), with ``report`` filled in as a
        batch fills it (its ``out`` is left to the caller)."""
        async with Dispatcher(self.pools, self._handle) as dispatcher:
            done: list[str | None] = [None]

            async def work() -> None:
                prepared = self._prepare(text, report)
                if prepared is not None:
                    outcome = await self._translate_chunks(dispatcher, 0, *prepared, rel, report)
                    done[0] = md.assemble(*outcome)
                if done[0] is not None:
                    report.status = "failed" if report.failed_chunks else "ok"

            await settle_article(rel, report, work(), progress=self.progress, emit=self._emit)
        return done[0]

    async def _translate_article(
        self,
        dispatcher: Dispatcher[Job, ChunkOutcome],
        n: int,
        src: Path,
        rel: Path,
        report: ArticleReport,
    ) -> None:
        # the text is let go once chunked (a 50 MB article: 35 to 200 MB of str)
        prepared = self._prepare(read_article(src), report)
        if prepared is None:
            return
        chunks, translations = await self._translate_chunks(dispatcher, n, *prepared, rel, report)
        del prepared
        out = output_path(
            src, rel, to=self.opts.to, out_dir=self.opts.out_dir, in_place=self.opts.in_place
        )
        # written as it is put together: no whole copy of a big article's translation
        write_article(out, md.assemble_pieces(chunks, translations))
        report.out = str(out)
        report.status = "failed" if report.failed_chunks else "ok"

    def _prepare(self, text: str, report: ArticleReport) -> tuple[md.Chunking, str] | None:
        """The article's chunks and source language; None when it is already in the
        target language (``report`` says so)."""
        source_lang = self.opts.source_lang
        if source_lang == "auto":
            source_lang = detect_lang(text)
        report.source_lang = source_lang
        if source_lang == self.opts.to:
            report.status = "skipped"
            report.error = f"already in {self.opts.to}"
            return None
        return md.chunk(md.parse(text), self.opts.chunk_tokens), source_lang

    async def _translate_chunks(
        self,
        dispatcher: Dispatcher[Job, ChunkOutcome],
        n: int,
        chunks: md.Chunking,
        source_lang: str,
        rel: Path,
        report: ArticleReport,
    ) -> tuple[md.Chunking, dict[int, str]]:
        """The article's chunks and their translations (chunk index -> text)."""
        report.chunks = len(chunks)
        self.progress("chunks-total", len(chunks))
        translations: dict[int, str] = {}
        if chunks:
            first = await self._chunk(dispatcher, n, rel, report, Job(chunks[0], source_lang, ()))
            anchor: tuple[tuple[str, str], ...] = ()
            if first.ok:
                translations[0] = first.text
                anchor = ((chunks[0].text, first.text),)
            jobs = (Job(ch, source_lang, anchor) for ch in islice(chunks, 1, None))
            await self._all(dispatcher, n, rel, report, jobs, translations)
        report.failed_chunks.sort()
        return chunks, translations

    async def _all(
        self,
        dispatcher: Dispatcher[Job, ChunkOutcome],
        n: int,
        rel: Path,
        report: ArticleReport,
        jobs: Iterable[Job],
        translations: dict[int, str],
    ) -> None:
        """Every job, each translation into ``translations``; a backend that gives up on
        one fails the article (its siblings are cancelled). At most ``chunks_at_once``
        chunks of the batch are under way at a time (a task each): enough to keep every
        seat and the board full, and a 30,000-chunk article holds 30,000 tasks no more."""

        async def one(job: Job) -> None:
            outcome = await self._chunk(dispatcher, n, rel, report, job)
            if outcome.ok:
                translations[job.chunk.index] = outcome.text

        def release(_task: object) -> None:  # also for a task cancelled before it ran
            self._under_way.release()

        try:
            async with asyncio.TaskGroup() as tg:
                for job in jobs:
                    await self._under_way.acquire()
                    tg.create_task(one(job)).add_done_callback(release)
        except ExceptionGroup as group:
            raise _one_failure(group) from None

    async def _chunk(
        self,
        dispatcher: Dispatcher[Job, ChunkOutcome],
        n: int,
        rel: Path,
        report: ArticleReport,
        job: Job,
    ) -> ChunkOutcome:
        """One chunk: from the cache, from an identical chunk in flight, or asked."""
        t0 = time.monotonic()
        ch = job.chunk
        outcome, how = await self.asker.outcome(dispatcher, f"{n}:{rel}#{ch.index}", job, rel)
        if how != "asked":
            report.from_cache += 1
        report.retried += outcome.retried
        report.split += outcome.split
        report.tokens += outcome.tokens
        if outcome.ok:
            report.glossary_misses += misses(self.opts.glossary, ch.text, outcome.text)
        else:
            report.failed_chunks.append(ch.index)
            log.warning(
                "chunk failed; source kept",
                article=str(rel),
                chunk=ch.index,
                problems=outcome.problems,
            )
        self.progress("chunk", 1)
        self.progress("tokens", outcome.tokens)
        self._emit(
            "chunk.finished",
            {
                "article": str(rel),
                "chunk": ch.index,
                "status": "ok" if outcome.ok else "failed",
                "from_cache": how == "cache",
                "deduplicated": how == "shared",
                "retried": outcome.retried,
                "duration_ms": round((time.monotonic() - t0) * 1000),
            },
        )
        return outcome

    # -- one chunk on a translator seat ---------------------------------------------------

    async def _handle(self, item: WorkItem[Job], pool: Pool) -> ChunkOutcome:
        with bound_affinity(item.id.rpartition("#")[0]):  # an article's chunks share the anchor
            return await self.chunks.translate(pool.client, item.payload)


async def settle_article(
    rel: Path,
    report: ArticleReport,
    work: Awaitable[None],
    *,
    progress: Progress,
    emit: Callable[[str, Mapping[str, Any]], None],
) -> None:
    """Run one article's ``work`` and give ``report`` an honest status whatever happens:
    ``error`` (unreadable, unwritable; the seat ledger gone, which stops the batch; a
    bug, which stops it too), ``failed`` (its translator gave up), ``interrupted``."""
    t0 = time.monotonic()
    try:
        await work
    except ArticleError as exc:  # this article cannot be read or written
        report.status, report.error = "error", str(exc)
    except BackendError as exc:  # the translator gave up on one of its chunks
        report.status, report.error = "failed", str(exc)
    except LedgerUnavailable as exc:  # no seat can be had: the whole batch stops
        report.status, report.error = "error", str(exc)
        raise
    except Exception as exc:  # a bug: say so, and stop the batch
        report.status, report.error = "error", f"internal error: {type(exc).__name__}: {exc}"
        raise
    except BaseException:  # cancelled (or interrupted): never swallowed
        report.status = "interrupted"
        raise
    finally:
        report.seconds = round(time.monotonic() - t0, 3)
        progress("article", 1)
        emit(
            "article.finished",
            {
                "article": str(rel),
                "status": report.status,
                "chunks": report.chunks,
                "from_cache": report.from_cache,
                "failed_chunks": len(report.failed_chunks),
                "duration_ms": round(report.seconds * 1000),
            },
        )


def _one_failure(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first of a task group's failures when every one of them is familiar's own
    (a backend that gave up, the seat ledger gone), else the whole group (a bug)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    if leaves and all(isinstance(e, FamiliarError) for e in leaves):
        return leaves[0]
    return group
