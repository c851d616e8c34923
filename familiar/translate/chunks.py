"""One chunk on a translator seat: ask, validate, retry, split, or flag.

A chunk's answer is kept only when it passes every check (``markdown.chunk_problems``:
placeholders, markup, length ratio, repetition, no chat preamble / closing remark / fence
around it, mostly in the target language, a finished ``stop``, no copied few-shot
example, and, put back in place, the source's block structure and protected spans; a
split chunk's joined parts pass them again). A rejected answer is asked again warmer
(greedy decoding would repeat it word for word) and, in the chat format, with the reason;
then the chunk is split smaller, then
it is marked failed with its source text kept. The cache key is the whole first request
as sent plus the model and this retry schedule, so that changing any of them asks again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from familiar.client.backend import CallResult, SlotClient
from familiar.config.roles import TRANSLATOR
from familiar.translate import markdown as md
from familiar.translate.cache import cache_key
from familiar.translate.formats import (
    FEWSHOT_EXAMPLES,
    FormatName,
    Request,
    build_request,
    clean_output,
    with_feedback,
)
from familiar.translate.markdown import chunk_problems

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
    retry_temperature: float = 0.3  # greedy decoding would repeat a rejected answer
    split_depth: int = MAX_SPLIT_DEPTH
    glossary: Mapping[str, str] = field(default_factory=dict)

    def retry_schedule(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "retry_temperature": self.retry_temperature,
            "split_depth": self.split_depth,
        }


@dataclass
class ChunkOutcome:
    text: str
    ok: bool
    retried: int = 0
    split: int = 0
    tokens: int = 0
    problems: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    temperature: float | None = None  # of the attempt that gave the answer
    attempt: int = 0  # 1-based; after a split, the attempts made on the whole chunk


@dataclass
class Job:
    """One chunk for the translator: the chunk, its languages and its context."""

    chunk: md.Chunk
    src: str
    context: tuple[tuple[str, str], ...]


def first_request(opts: BatchOptions, job: Job, max_tokens: int) -> Request:
    """The request of a chunk's first attempt (retries change only the temperature)."""
    budget = min(max_tokens, 2 * job.chunk.tokens + 64)  # room, but no runaway
    return build_request(
        opts.fmt,
        job.chunk.text,
        job.src,
        opts.to,
        glossary=opts.glossary,
        context=job.context,
        max_tokens=budget,
    )


def chunk_key(opts: BatchOptions, job: Job, *, model: str, max_tokens: int) -> str:
    """The cache key: the whole first request as sent, the model, the retry schedule."""
    return cache_key(
        first_request(opts, job, max_tokens),
        model=model,
        format=opts.fmt,
        retry=opts.retry_schedule(),
    )


class ChunkTranslator:
    """Translates single chunks under a batch's options."""

    def __init__(self, opts: BatchOptions, max_tokens: int) -> None:
        self.opts = opts
        self.max_tokens = max_tokens

    def shots(self, src: str) -> Sequence[tuple[str, str]]:
        """The few-shot example pairs the prompt carries (only the fewshot format has any)."""
        return FEWSHOT_EXAMPLES.get((src, self.opts.to), ()) if self.opts.fmt == "fewshot" else ()

    def problems(self, job: Job, output: str, finish_reason: str | None) -> list[str]:
        """Everything wrong with ``output`` as the translation of ``job``'s chunk."""
        shots = self.shots(job.src)
        return chunk_problems(job.chunk, output, finish_reason, shots, dst=self.opts.to)

    async def translate(self, client: SlotClient, job: Job, depth: int = 0) -> ChunkOutcome:
        """Ask, validate, retry warmer, split smaller, or give the source back flagged."""
        ch = job.chunk
        attempts = self.opts.attempts
        problems: list[str] = []
        tokens = 0
        for attempt in range(1, attempts + 1):
            result, temperature = await self._ask(client, job, refused=problems)
            tokens += result.completion_tokens or 0
            output = clean_output(self.opts.fmt, result.text)
            problems = self.problems(job, output, result.finish_reason)
            if not problems:
                return ChunkOutcome(
                    output,
                    ok=True,
                    retried=attempt - 1,
                    tokens=tokens,
                    finish_reason=result.finish_reason,
                    temperature=temperature,
                    attempt=attempt,
                )
        if depth < self.opts.split_depth:
            parts = md.split_chunk(ch)
            if len(parts) > 1:
                outcomes = [
                    await self.translate(client, Job(p, job.src, job.context), depth + 1)
                    for p in parts
                ]
                joined = md.join_parts(parts, [o.text for o in outcomes])
                whole = self.problems(job, joined, "stop") if all(o.ok for o in outcomes) else []
                if all(o.ok for o in outcomes) and not whole:  # the parts, then the whole
                    return ChunkOutcome(
                        joined,
                        ok=True,
                        retried=attempts - 1,
                        split=1 + sum(o.split for o in outcomes),
                        tokens=tokens + sum(o.tokens for o in outcomes),
                        finish_reason="stop",
                        temperature=max(o.temperature or 0.0 for o in outcomes),
                        attempt=attempts,
                    )
                problems = whole or problems
        return ChunkOutcome(
            ch.text, ok=False, retried=attempts - 1, tokens=tokens, problems=problems
        )

    async def _ask(
        self, client: SlotClient, job: Job, *, refused: Sequence[str] = ()
    ) -> tuple[CallResult, float | None]:
        """One answer, and the temperature it was asked with; after a refused answer,
        warmer and (chat) with the reason."""
        req = first_request(self.opts, job, self.max_tokens)
        if refused:
            req = with_feedback(req, refused)
        params = dict(req.params or {})
        if refused:  # greedy decoding would repeat the rejected answer word for word
            params["temperature"] = self.opts.retry_temperature
        temperature = params.get("temperature")
        if req.kind == "completion":
            assert req.prompt is not None
            result = await client.complete(req.prompt, role=TRANSLATOR, **params)
        else:
            result = await client.chat(req.messages, role=TRANSLATOR, **params)
        return result, None if temperature is None else float(temperature)
