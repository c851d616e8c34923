"""Translation batches: articles -> chunks -> cache / translator seats -> validated -> written.

Every article's chunks go, in order, through the core dispatcher to the translator
slot's seats (the chunks of all articles share them); the previous chunk and its
translation travel along as context. Each chunk is validated (placeholders back
exactly once, finish_reason not ``length``, sane length ratio, no runaway repetition);
a bad chunk is retried, then split smaller, then marked failed with its source text
kept and flagged. Finished chunks are cached in sqlite as they arrive; each article is
written atomically as soon as its chunks are done.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from familiar.backend import CallResult, SlotClient
from familiar.dispatch import Dispatcher, Pool, WorkItem
from familiar.errors import BackendError
from familiar.lang import detect_lang
from familiar.store import write_text_atomic
from familiar.telemetry import Telemetry
from familiar.translate import markdown as md
from familiar.translate.cache import ChunkCache, cache_key
from familiar.translate.formats import FormatName, build_request, clean_output, format_version
from familiar.translate.glossary import misses

log = structlog.get_logger("familiar.translate")

MAX_SPLIT_DEPTH = 2


@dataclass(frozen=True)
class BatchOptions:
    to: str
    source_lang: str = "auto"
    fmt: FormatName = "chat"
    out_dir: Path | None = None
    in_place: bool = False
    force: bool = False
    chunk_tokens: int = 700
    attempts: int = 2
    glossary: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ArticleReport:
    path: str
    out: str | None = None
    status: str = "pending"  # ok | failed | error | skipped
    source_lang: str | None = None
    chunks: int = 0
    from_cache: int = 0
    retried: int = 0
    split: int = 0
    failed_chunks: list[int] = field(default_factory=list)
    glossary_misses: list[str] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class ChunkOutcome:
    text: str
    ok: bool
    retried: int = 0
    split: int = 0
    tokens: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Job:
    """One chunk for the translator: the chunk, its languages and its context."""

    chunk: md.Chunk
    src: str
    context: tuple[tuple[str, str], ...]


Progress = Callable[[str, int], None]  # (what, amount): "chunk", "article", "tokens"


_LINKED = re.compile(r"\][^\s\]]{1,2}P\d+[^\s\]]")


def markup_problems(source: str, output: str) -> list[str]:
    """Markdown syntax left visible in the prose (link brackets, emphasis) must survive,
    and a link's text must stay attached to its protected target (``[text]⟦P0⟧``)."""
    problems = [
        f"link target {m.group()[1:]} detached from its text"
        for m in _LINKED.finditer(source)
        if m.group() not in output
    ]
    for mark in ("[", "]", "**", "`"):
        if source.count(mark) != output.count(mark):
            problems.append(
                f"{mark!r} appears {output.count(mark)} time(s), expected {source.count(mark)}"
            )
    return problems


def discover(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(file, path relative to its root) for files given and ``*.md`` under dirs."""
    found: list[tuple[Path, Path]] = []
    for p in paths:
        if p.is_dir():
            found += [(f, f.relative_to(p)) for f in sorted(p.rglob("*.md")) if not f.is_dir()]
        else:
            found.append((p, Path(p.name)))
    return found


def read_article(path: Path) -> str:
    """The text of a UTF-8 Markdown file, or ValueError with a one-line reason."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    if not data.strip():
        raise ValueError("empty file")
    if b"\x00" in data[:8192]:
        raise ValueError("binary file, not Markdown")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        hint = ""
        for enc in ("shift_jis", "euc_jp"):
            try:
                data.decode(enc)
                hint = f" (looks like {enc.replace('_', '-').upper()}; convert it to UTF-8)"
                break
            except UnicodeDecodeError:
                continue
        raise ValueError(f"not UTF-8{hint}") from None


def output_path(src: Path, rel: Path, opts: BatchOptions) -> Path:
    if opts.in_place:
        return src
    base = opts.out_dir or Path.cwd() / f"translated-{opts.to}"
    return base / rel


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

    def _emit(self, name: str, fields: Mapping[str, Any]) -> None:
        if self.telemetry is not None:
            self.telemetry.emit(name, fields)

    def _key(self, text: str, src: str) -> str:
        return cache_key(
            text,
            model=self.model,
            fmt=self.opts.fmt,
            version=format_version(self.opts.fmt),
            src=src,
            dst=self.opts.to,
            glossary=sorted(self.opts.glossary.items()),
            temperature=0.0,
        )

    async def run(self, files: Sequence[tuple[Path, Path]]) -> list[ArticleReport]:
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
        reports = [ArticleReport(path=str(f)) for f, _ in files]
        async with Dispatcher(self.pools, self._handle) as dispatcher:
            async with asyncio.TaskGroup() as tg:
                for (src, rel), report in zip(files, reports, strict=True):
                    tg.create_task(self._article(dispatcher, src, rel, report))
        self._emit(
            "batch.end",
            {
                "articles": len(reports),
                "failed": sum(r.status != "ok" for r in reports),
                "duration_ms": round((time.monotonic() - started) * 1000),
            },
        )
        return reports

    async def _article(
        self, dispatcher: Dispatcher[Job, ChunkOutcome], src: Path, rel: Path, report: ArticleReport
    ) -> None:
        t0 = time.monotonic()
        try:
            await self._translate_article(dispatcher, src, rel, report)
        except ValueError as exc:
            report.status, report.error = "error", str(exc)
        except BackendError as exc:
            report.status, report.error = "failed", str(exc)
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

    async def _translate_article(
        self, dispatcher: Dispatcher[Job, ChunkOutcome], src: Path, rel: Path, report: ArticleReport
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
            key = self._key(ch.text, source_lang)
            cached = None if self.opts.force else self.cache.get(key)
            if cached is not None:
                outcome = ChunkOutcome(cached, ok=True)
                report.from_cache += 1
            else:
                job = Job(ch, source_lang, (previous,) if previous else ())
                fut = await dispatcher.submit(WorkItem(f"{rel}#{ch.index}", "translator", job))
                result = await fut
                if result.error is not None:
                    raise result.error
                assert result.value is not None
                outcome = result.value
                if outcome.ok:
                    self.cache.put(key, outcome.text, self.model)
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
                    "from_cache": cached is not None,
                    "retried": outcome.retried,
                    "duration_ms": round((time.monotonic() - t0) * 1000),
                },
            )
        out = output_path(src, rel, self.opts)
        write_text_atomic(out, md.assemble(article, translations))
        report.out = str(out)
        report.status = "failed" if report.failed_chunks else "ok"

    # -- one chunk on a translator seat ---------------------------------------------------

    async def _handle(self, item: WorkItem[Job], pool: Pool) -> ChunkOutcome:
        return await self._translate(pool.client, item.payload, depth=0)

    async def _translate(self, client: SlotClient, job: Job, depth: int) -> ChunkOutcome:
        ch = job.chunk
        problems: list[str] = []
        tokens = 0
        for attempt in range(self.opts.attempts):
            result = await self._ask(client, job, retry=attempt > 0)
            tokens += result.completion_tokens or 0
            output = clean_output(self.opts.fmt, result.text)
            problems = md.validate(ch, output) + markup_problems(ch.text, output)
            if result.finish_reason == "length":
                problems.append("the answer was cut off (finish_reason=length)")
            if not problems:
                return ChunkOutcome(output, ok=True, retried=attempt, tokens=tokens)
        if depth < MAX_SPLIT_DEPTH:
            parts = md.split_chunk(ch)
            if len(parts) > 1:
                outcomes = [
                    await self._translate(client, Job(p, job.src, job.context), depth + 1)
                    for p in parts
                ]
                if all(o.ok for o in outcomes):
                    joined = md.join_parts(parts, [o.text for o in outcomes])
                    return ChunkOutcome(
                        joined,
                        ok=True,
                        retried=self.opts.attempts - 1,
                        split=1 + sum(o.split for o in outcomes),
                        tokens=tokens + sum(o.tokens for o in outcomes),
                    )
        return ChunkOutcome(
            ch.text, ok=False, retried=self.opts.attempts - 1, tokens=tokens, problems=problems
        )

    async def _ask(self, client: SlotClient, job: Job, *, retry: bool = False) -> CallResult:
        budget = min(self.max_tokens, 2 * job.chunk.tokens + 64)  # room, but no runaway
        req = build_request(
            self.opts.fmt,
            job.chunk.text,
            job.src,
            self.opts.to,
            glossary=self.opts.glossary,
            context=job.context,
            max_tokens=budget,
        )
        params = dict(req.params or {})
        if retry:  # greedy decoding would repeat the rejected answer word for word
            params["temperature"] = 0.3
        if req.kind == "completion":
            assert req.prompt is not None
            return await client.complete(req.prompt, role="translator", **params)
        return await client.chat(req.messages, role="translator", **params)
