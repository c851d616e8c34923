"""Warm, then fan out: of requests that share a long prompt prefix and start together, the
first goes alone until its first token, then the rest.

Servers cache a prompt prefix once it is computed (vLLM automatic prefix caching, SGLang
RadixAttention, llama-server ``cache_prompt``), but requests that arrive together are computed
together: N workers released at once each compute the shared prefix again, on whichever replica
they land, and slow every other request there. Held back until the first has its first token
(its prefix is then in its replica's cache, where affinity sends the rest), they find it cached.

A request's *prefix key* is its affinity key (a session, an article) and the first
:data:`HEAD_CHARS` characters of its prompt (the system message first); a prompt shorter than
that is never held (its prefill is cheap). A key warms once: the first request with it is the
warmer; others arriving while it has no first token wait (without a seat); after it, nobody
waits (a bounded memory of warm keys). A warmer that fails or is cancelled before its first
token lets the next waiter warm instead. Waiting never holds a seat, so other work runs.
The prefix key is also what the replica choice places a long prompt by (``prefix_key``;
familiar/client/replicas.py). ``benchmarks/affinity.py`` measures what it buys.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

HEAD_CHARS = 2000  # about 500 tokens: shorter shared prefixes are not worth a wait
REMEMBER = 4096  # warm keys kept


def prompt_head(body: Mapping[str, Any], chars: int = HEAD_CHARS) -> str:
    """The first ``chars`` characters of a request's prompt (chat: every message's content
    in order, separated by NUL)."""
    messages = body.get("messages")
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        parts: list[str] = []
        size = 0
        for m in messages:
            content = m.get("content") if isinstance(m, Mapping) else None
            text = content if isinstance(content, str) else str(content)
            parts.append(text)
            size += len(text) + 1
            if size >= chars:
                break
        return "\0".join(parts)[:chars]
    prompt = body.get("prompt")
    return prompt[:chars] if isinstance(prompt, str) else ""


def prefix_key(
    affinity: str | None, body: Mapping[str, Any], chars: int = HEAD_CHARS
) -> str | None:
    """The prefix key of a request: its affinity key and the first ``chars`` characters of
    its prompt, hashed (None: no affinity, or a prompt too short to be worth keeping
    together)."""
    if affinity is None:
        return None
    head = prompt_head(body, chars)
    if len(head) < chars:
        return None
    return hashlib.blake2b(f"{affinity}\0{head}".encode(), digest_size=16).hexdigest()


class WarmGate:
    """Which request warms a prefix, and who waits for it (one per SlotClient)."""

    def __init__(self, chars: int = HEAD_CHARS, remember: int = REMEMBER) -> None:
        self.chars = chars
        self.remember = remember
        self._warm: OrderedDict[str, None] = OrderedDict()
        self._warming: dict[str, asyncio.Future[None]] = {}
        self.held = 0  # requests that waited for a warm-up

    def key(self, affinity: str | None, body: Mapping[str, Any]) -> str | None:
        """The prefix key of a request (None: never held)."""
        return prefix_key(affinity, body, self.chars)

    async def enter(self, key: str) -> asyncio.Future[None] | None:
        """Wait while another request warms ``key``; returns a future when this request is
        the warmer (hand it to :meth:`warmed` at the first token, :meth:`leave` at the end),
        None when the prefix is warm."""
        while True:
            if key in self._warm:
                self._warm.move_to_end(key)
                return None
            pending = self._warming.get(key)
            if pending is None:
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._warming[key] = fut
                return fut
            self.held += 1
            await asyncio.shield(pending)

    def warmed(self, key: str, fut: asyncio.Future[None]) -> None:
        """The warmer's first token came: the rest go."""
        if fut.done():
            return
        self._warm[key] = None
        self._warm.move_to_end(key)
        while len(self._warm) > self.remember:
            self._warm.popitem(last=False)
        self._release(key, fut)

    def leave(self, key: str, fut: asyncio.Future[None]) -> None:
        """The warmer ended (any way): waiters go on, one of them warming if it did not."""
        self._release(key, fut)

    def _release(self, key: str, fut: asyncio.Future[None]) -> None:
        if self._warming.get(key) is fut:
            del self._warming[key]
        if not fut.done():
            fut.set_result(None)
