"""A per-server prefix cache and prefill cost for the fake server (affinity benchmarks, tests).

Tokens are the whitespace words of the prompt (what the fake server counts as
``prompt_tokens``): every message's content in order for a chat, the prompt for a completion.
Full blocks of ``block`` tokens are hashed in a chain, as vLLM's automatic prefix caching does;
the cache keeps ``capacity_tokens`` worth of blocks and drops the least recently used first.

* A request looks its prefix up when its prefill starts and puts its blocks in when its prefill
  ends: requests that share a prefix and start together each compute it (as vLLM and SGLang do
  for requests scheduled in the same step); one that starts after another's prefill finds it.
* Prefill costs ``prefill_s_per_token`` per *uncached* token, and one server's prefills share its
  compute (processor sharing: n prefills in progress each advance at 1/n of the rate), so
  computing a prefix again slows every other request on that server too.
* At least one token is always computed (a fully cached prompt recomputes its last block).

``style`` says how a server reports the hits: ``"openai"`` (vLLM, SGLang, OpenAI, newer
llama-server): ``usage.prompt_tokens_details.cached_tokens``; ``"llama"`` (llama-server):
``timings.cache_n`` (cached) and ``timings.prompt_n`` (computed) next to the usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

STYLES = ("openai", "llama")


@dataclass(frozen=True)
class PrefixCacheConfig:
    prefill_s_per_token: float = 0.0
    capacity_tokens: int = 1_000_000
    block: int = 16
    style: str = "openai"

    def __post_init__(self) -> None:
        if self.prefill_s_per_token < 0:
            raise ValueError("prefill_s_per_token must be >= 0")
        if self.block < 1 or self.capacity_tokens < 0:
            raise ValueError("block must be >= 1 and capacity_tokens >= 0")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {list(STYLES)}, got {self.style!r}")


class PrefixCache:
    """One server's prefix cache and prefill lane (see the module docstring)."""

    def __init__(self, config: PrefixCacheConfig) -> None:
        self.config = config
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._active = 0
        self._work = 0.0  # tokens of prefill each active request has received so far
        self._last = time.monotonic()
        self._changed = asyncio.Event()
        self.requests = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0

    def clear(self) -> None:
        self._blocks.clear()
        self.requests = self.prompt_tokens = self.cached_tokens = 0

    @property
    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "blocks": len(self._blocks),
        }

    def _hashes(self, tokens: Sequence[str]) -> list[int]:
        b = self.config.block
        out: list[int] = []
        h = 0
        for i in range(0, len(tokens) - b + 1, b):
            h = hash((h, *tokens[i : i + b]))
            out.append(h)
        return out

    def _lookup(self, hashes: list[int], n_tokens: int) -> int:
        matched = 0
        for h in hashes:
            if h not in self._blocks:
                break
            self._blocks.move_to_end(h)
            matched += 1
        b = self.config.block
        return min(matched * b, ((n_tokens - 1) // b) * b)

    def _insert(self, hashes: list[int]) -> None:
        for h in hashes:
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        limit = self.config.capacity_tokens // self.config.block
        while len(self._blocks) > limit:
            self._blocks.popitem(last=False)

    async def prefill(self, tokens: Sequence[str]) -> int:
        """Serve one prompt's prefill; returns the tokens that came from the cache."""
        n = max(len(tokens), 1)
        hashes = self._hashes(tokens)
        cached = self._lookup(hashes, n)
        self.requests += 1
        self.prompt_tokens += n
        self.cached_tokens += cached
        await self._compute(n - cached)
        self._insert(hashes)
        return cached

    def _advance(self) -> None:
        now = time.monotonic()
        cost = self.config.prefill_s_per_token
        if self._active and cost > 0:
            self._work += (now - self._last) / (cost * self._active)
        self._last = now

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _compute(self, tokens: int) -> None:
        cost = self.config.prefill_s_per_token
        if cost <= 0 or tokens <= 0:
            return
        self._advance()
        target = self._work + tokens
        self._active += 1
        self._notify()
        try:
            while True:
                self._advance()
                left = target - self._work
                if left <= 1e-6:
                    return
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left * cost * self._active):
                        await changed.wait()
        finally:
            self._advance()
            self._active -= 1
            self._notify()

    def report(self, prompt_tokens: int, cached: int) -> dict[str, Any]:
        """What the answer says about the cache: usage extras or llama-server timings."""
        if self.config.style == "llama":
            return {"timings": {"cache_n": cached, "prompt_n": max(prompt_tokens - cached, 0)}}
        return {"prompt_tokens_details": {"cached_tokens": cached}}
