"""Translation batch throughput vs direct concurrent calls vs one request at a time.

A fixed-latency fake translator (own process, ``--latency`` per request) with S seats.
The batch translates A generated Japanese articles through familiar (chunking,
placeholders, validation, cache writes, per-article chains, the dispatcher). The
direct run sends exactly the same chunk texts as chat requests with the raw
AsyncOpenAI client at concurrency S; the serial run sends them one at a time.
Tokens/s counts the completion tokens the server reports. Target: batch >= 0.95x direct.

    python benchmarks/translate.py [--articles 16] [--seats 4] [--latency 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import _common
import openai

from familiar.client.backend import SlotClient
from familiar.config.slots import Slot
from familiar.dispatch import Pool
from familiar.translate import markdown as md
from familiar.translate.batch import BatchOptions, Translator
from familiar.translate.cache import ChunkCache
from familiar.translate.files import discover
from familiar.translate.formats import build_request
from tests.support.fake_openai import spawn_fake_server

PARA = (
    "お湯を沸かして、少し冷ましてから茶葉に注ぎます。詳しくは[公式サイト](https://example.com)"
    "を見てください。`temp = 80` を目安にします。"
)


def article(n: int) -> str:
    parts = [f"---\ntitle: 記事{n}\n---\n"]
    for s in range(5):
        parts.append(f"## 見出し{s}\n\n{PARA * 3}\n\n```python\nx = {s}\n```\n")
    return "\n".join(parts)


async def batch(url: str, root: Path, seats: int) -> tuple[float, int, int]:
    slot = Slot(name="translator", url=url, model="m", runtime="vllm", parallel=seats)
    cache = ChunkCache(root / "cache.sqlite")
    try:
        async with SlotClient(slot) as client:
            opts = BatchOptions(to="en", out_dir=root / "out", force=True, chunk_tokens=200)
            translator = Translator([Pool("translator", "translator", seats, client)], opts, cache)
            start = time.perf_counter()
            reports = await translator.run(discover([root / "src"]))
            took = time.perf_counter() - start
    finally:
        cache.close()
    assert all(r.status == "ok" for r in reports), [r.error for r in reports]
    return took, sum(r.tokens for r in reports), sum(r.chunks for r in reports)


async def direct(url: str, texts: list[str], conc: int) -> tuple[float, int]:
    sem = asyncio.Semaphore(conc)
    tokens = 0
    async with openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0) as client:

        async def one(text: str) -> None:
            nonlocal tokens
            req = build_request("chat", text, "ja", "en", max_tokens=512)
            async with sem:
                r = await client.chat.completions.create(
                    model="m",
                    messages=list(req.messages),
                    temperature=0.0,  # type: ignore[arg-type]
                    max_tokens=512,
                )
            tokens += r.usage.completion_tokens if r.usage else 0

        start = time.perf_counter()
        await asyncio.gather(*(one(t) for t in texts))
        return time.perf_counter() - start, tokens


async def main(args: argparse.Namespace) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        spawn_fake_server(latency_s=args.latency, reply_mode="identity") as srv,
    ):
        root = Path(tmp)
        (root / "src").mkdir()
        for n in range(args.articles):
            (root / "src" / f"a{n}.md").write_text(article(n), encoding="utf-8")
        texts = [
            c.text
            for f, _ in discover([root / "src"])
            for c in md.chunk(md.parse(f.read_text(encoding="utf-8")), 200)
        ]
        rows = []
        b_t, b_tok, chunks = await batch(srv.url, root, args.seats)
        d_t, d_tok = await direct(srv.url, texts, args.seats)
        s_t, s_tok = await direct(srv.url, texts[: max(1, len(texts) // 4)], 1)
        s_t *= len(texts) / max(1, len(texts) // 4)  # a quarter, scaled: serial is slow
        s_tok = d_tok
        direct_rate = d_tok / d_t
        for name, t, tok in (
            ("familiar batch", b_t, b_tok),
            ("direct concurrent", d_t, d_tok),
            ("one at a time (scaled)", s_t, s_tok),
        ):
            rows.append([name, t, tok, tok / t, (tok / t) / direct_rate])
    print(
        f"translate: {args.articles} articles, {chunks} chunks, {args.seats} seats, "
        f"latency {args.latency}s per request"
    )
    print(_common.table(["run", "seconds", "tokens", "tokens/s", "x direct"], rows))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--articles", type=int, default=16)
    p.add_argument("--seats", type=int, default=4)
    p.add_argument("--latency", type=float, default=0.1)
    asyncio.run(main(p.parse_args()))
