"""Translation batches: articles -> chunks -> cache / translator seats -> validated -> written.

Every article's chunks go, in order, through the core dispatcher to the translator
slot's seats (the chunks of all articles share them); the previous chunk and its
translation travel along as context. Each chunk is validated (placeholders back
exactly once, finish_reason ``stop``, sane length ratio, no runaway repetition); a bad
chunk is retried, then split smaller, then marked failed with its source text kept and
flagged. Finished chunks are cached in sqlite as they arrive, and a cached chunk is
served only if it passes the same checks again; each article is written atomically as
soon as its chunks are done.

An article that cannot be read or written is that article's error (``ArticleError``);
a backend that gives up fails that article; anything else is a bug and stops the
batch. ``article.finished`` and ``batch.end`` always carry an honest status
(``interrupted`` when the batch is cancelled).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from familiar.backend import SlotClient
from familiar.dispatch import Dispatcher, Pool, WorkItem
from familiar.errors import ArticleError, BackendError
from familiar.lang import detect_lang
from familiar.telemetry import Telemetry
from familiar.translate import markdown as md
from familiar.translate.cache import CachedChunk, ChunkCache
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
]

log = structlog.get_logger("familiar.translate")

Progress = Callable[[str, int], None]  # (what, amount): "chunk", "article", "tokens"


class Translator:
    """Runs one batch over a translator client (or several replicas' pools)."""

    def __init__(
        self,
        pools: Sequence[Pool],
        opts: BatchOptions,
        cache: ChunkCache,
        *,
        telemetry: Telemetry | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.pools = list(pools)
        self.opts = opts
        self.cache = cache
        self.telemetry = telemetry
        self.progress = progress or (lambda _what, _n: None)
        client: SlotClient = self.pools[0].client
        self.model = client.slot.model
        self.max_tokens = client.slot.max_tokens or 2048
        self.chunks = ChunkTranslator(opts, self.max_tokens)

    def _emit(self, name: str, fields: Mapping[str, Any]) -> None:
        if self.telemetry is not None:
            self.telemetry.emit(name, fields)

    def _key(self, job: Job) -> str:
        return chunk_key(self.opts, job, model=self.model, max_tokens=self.max_tokens)

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
            async with Dispatcher(self.pools, self._handle) as dispatcher:
                async with asyncio.TaskGroup() as tg:
                    for n, ((src, rel), report) in enumerate(zip(files, reports, strict=True)):
                        tg.create_task(self._article(dispatcher, n, src, rel, report))
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

    async def _article(
        self,
        dispatcher: Dispatcher[Job, ChunkOutcome],
        n: int,
        src: Path,
        rel: Path,
        report: ArticleReport,
    ) -> None:
        t0 = time.monotonic()
        try:
            await self._translate_article(dispatcher, n, src, rel, report)
        except ArticleError as exc:  # this article cannot be read or written
            report.status, report.error = "error", str(exc)
        except BackendError as exc:  # the translator gave up on one of its chunks
            report.status, report.error = "failed", str(exc)
        except Exception as exc:  # a bug: say so, and stop the batch
            report.status, report.error = "error", f"internal error: {type(exc).__name__}: {exc}"
            raise
        except BaseException:  # cancelled (or interrupted): never swallowed
            report.status = "interrupted"
            raise
        finally:
            report.seconds = round(time.monotonic() - t0, 3)
            self.progress("article", 1)
            self._emit(
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

    def _from_cache(self, job: Job, key: str, rel: Path) -> ChunkOutcome | None:
        """The cached translation, if there is one and it passes today's checks."""
        found = self.cache.get(key)
        if found is None:
            return None
        problems = chunk_problems(
            job.chunk, found.output, found.finish_reason, self.chunks.shots(job.src)
        )
        if problems:
            log.info(
                "cached chunk fails the checks; asking again",
                article=str(rel),
                chunk=job.chunk.index,
                problems=problems,
            )
            return None
        return ChunkOutcome(
            found.output,
            ok=True,
            finish_reason=found.finish_reason,
            temperature=found.temperature,
            attempt=found.attempt,
        )

    async def _translate_article(
        self,
        dispatcher: Dispatcher[Job, ChunkOutcome],
        n: int,
        src: Path,
        rel: Path,
        report: ArticleReport,
    ) -> None:
        text = read_article(src)
        source_lang = self.opts.source_lang
        if source_lang == "auto":
            source_lang = detect_lang(text)
        report.source_lang = source_lang
        if source_lang == self.opts.to:
            report.status = "skipped"
            report.error = f"already in {self.opts.to}"
            return
        article = md.parse(text)
        chunks = md.chunk(article, self.opts.chunk_tokens)
        report.chunks = len(chunks)
        self.progress("chunks-total", len(chunks))
        translations: dict[int, str] = {}
        previous: tuple[str, str] | None = None
        for ch in chunks:
            t0 = time.monotonic()
            job = Job(ch, source_lang, (previous,) if previous else ())
            key = self._key(job)
            outcome = None if self.opts.force else self._from_cache(job, key, rel)
            from_cache = outcome is not None
            if outcome is not None:
                report.from_cache += 1
            else:
                item = WorkItem(f"{n}:{rel}#{ch.index}", "translator", job)
                result = await (await dispatcher.submit(item))
                if result.error is not None:
                    raise result.error
                assert result.value is not None
                outcome = result.value
                if outcome.ok:
                    self.cache.put(
                        key,
                        CachedChunk(
                            outcome.text,
                            self.model,
                            outcome.finish_reason,
                            outcome.temperature,
                            outcome.attempt,
                            outcome.split,
                        ),
                    )
            report.retried += outcome.retried
            report.split += outcome.split
            report.tokens += outcome.tokens
            if outcome.ok:
                translations[ch.index] = outcome.text
                previous = (ch.text, outcome.text)
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
                    "from_cache": from_cache,
                    "retried": outcome.retried,
                    "duration_ms": round((time.monotonic() - t0) * 1000),
                },
            )
        out = output_path(
            src, rel, to=self.opts.to, out_dir=self.opts.out_dir, in_place=self.opts.in_place
        )
        write_article(out, md.assemble(chunks, translations))
        report.out = str(out)
        report.status = "failed" if report.failed_chunks else "ok"

    # -- one chunk on a translator seat ---------------------------------------------------

    async def _handle(self, item: WorkItem[Job], pool: Pool) -> ChunkOutcome:
        return await self.chunks.translate(pool.client, item.payload)
