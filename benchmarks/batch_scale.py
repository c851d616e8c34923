"""Batches at scale on one host: memory, one long article, identical chunks, big articles.

1. Peak RSS of ``familiar translate`` (a real process, ``os.wait4``) over 1,000 / 5,000
   / 20,000 generated articles of about 9 KB each against the fake translator (its own
   process, fixed latency, ``--seats`` seats). Target: flat, < 150 MB at 5,000.
2. One long article (``--chunks`` chunks) on 4 seats at ``--long-latency`` per request:
   the batch's wall time vs the serial time (chunks x latency). Target: < 0.5x.
3. Ten copies of one article at once: requests made vs chunks (each distinct chunk once).
4. One article of 1 / 5 / 50 MB (``--single``; about 530 chunks per MB) vs the same
   Markdown as ~9 KB articles, same seats and latency as 1.: chunks/s, requests/s and
   peak RSS. Target: time and memory linear in the article's size (a 50 MB article at
   the requests/s of the small articles, peak RSS < 500 MB).

    python benchmarks/batch_scale.py [--sizes 1000,5000,20000] [--seats 16]
        [--latency 0.005] [--chunks 37] [--long-latency 0.3] [--single 1,5,50] [--no-small]
        [--only memory,long,copies,single]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

from tests.support.fake_openai import spawn_fake_server

SENTENCES = (
    "お湯を沸かして、少し冷ましてから茶葉に注ぎます。",
    "詳しくは[公式サイト](https://example.com/{n}/{i})を見てください。",
    "`temp = 80` を目安にします。",
    "急須を温めておくと、お茶の香りがよく立ちます。",
    "熱すぎるお湯は苦味の原因になります。",
    "茶葉の量は人数に合わせて調整します。",
    "二煎目は少し熱めのお湯で淹れても構いません。",
    "保存するときは湿気と光を避けてください。",
    "産地によって味わいがかなり異なります。",
    "水は軟水のほうが向いていると言われます。",
    "蒸らし時間は一分ほどが目安です。",
    "最後の一滴まで注ぎ切るのがこつです。",
)


def article(n: int, paragraphs: int = 24) -> str:
    """About 8 KB of Japanese Markdown; sentences vary by article and paragraph, so no
    chunk is a copy of another (real articles do not repeat themselves)."""
    body = []
    for i in range(paragraphs):
        picks = [SENTENCES[(n * 7 + i * 5 + k * 3) % len(SENTENCES)] for k in range(6)]
        body.append(f"記事{n}の段落{i}です。" + "".join(picks).format(n=n, i=i))
    return f"---\ntitle: 記事{n}\n---\n\n# 記事{n}\n\n" + "\n\n".join(body) + "\n"


def workspace(root: Path, url: str, seats: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "slots.toml").write_text(
        f'[slots.translator]\nurl = "{url}"\nmodel = "m"\nruntime = "vllm"\n'
        f"parallel = {seats}\n"
        f'[slots.naughty]\nurl = "{url}"\nmodel = "m"\nparallel = 1\n'
    )
    (root / "CLAUDE.md").write_text("familiar: naughty x translator\n")


def run_batch(root: Path, *extra: str) -> tuple[float, float, list[dict[str, object]]]:
    """Wall seconds, peak RSS in MB, and the JSON report of one ``familiar translate``."""
    wall, rss, _cpu, rows = run_batch_cpu(root, *extra)
    return wall, rss, rows


def run_batch_cpu(root: Path, *extra: str) -> tuple[float, float, float, list[dict[str, object]]]:
    """Wall seconds, peak RSS in MB, CPU seconds (user + system: what the process did,
    whatever else the host runs) and the JSON report of one ``familiar translate``."""
    env = {
        **os.environ,
        "FAMILIAR_HOME": str(root / ".home"),
        "FAMILIAR_TELEMETRY": "off",
        "FAMILIAR_LEDGER_DIR": str(root / ".ledger"),
    }
    cmd = [sys.executable, "-m", "familiar", "translate", "src", "--to", "en", "--out", "out"]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [*cmd, "--json", *extra], cwd=root, env=env, stdout=out, stderr=subprocess.DEVNULL
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        rows = json.loads(out.read() or b"{}").get("articles", [])  # --json version 2
    if proc.returncode != 0:
        raise SystemExit(f"familiar translate exited {proc.returncode} in {root}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, rows


def memory(args: argparse.Namespace, tmp: Path) -> None:
    rows = []
    with spawn_fake_server(latency_s=args.latency, reply_mode="identity") as srv:
        for size in args.sizes:
            root = tmp / f"mem{size}"
            workspace(root, srv.url, args.seats)
            src = root / "src"
            src.mkdir()
            total = 0
            for n in range(size):
                text = article(n)
                total += len(text.encode())
                (src / f"a{n:06}.md").write_text(text, encoding="utf-8")
            wall, rss, report = run_batch(root)
            chunks = sum(int(str(r["chunks"])) for r in report)
            rows.append([size, f"{total / 1e6:.1f}", chunks, wall, rss])
    print(
        f"\n1. memory: generated articles (~{len(article(0).encode()) / 1000:.1f} KB each),"
        f" {args.seats} seats, {args.latency * 1000:.0f} ms per request"
    )
    print(_common.table(["articles", "MB of Markdown", "chunks", "wall s", "peak RSS MB"], rows))


def long_article(args: argparse.Namespace, tmp: Path) -> None:
    root = tmp / "long"
    with spawn_fake_server(latency_s=args.long_latency, reply_mode="identity") as srv:
        workspace(root, srv.url, 4)
        src = root / "src"
        src.mkdir()
        paragraphs = [
            f"段落{i}では、ゾルブラットの倉庫{i}番について説明します。" + "詳しい説明です。" * 4
            for i in range(args.chunks - 1)
        ]
        (src / "long.md").write_text("# 長い記事\n\n" + "\n\n".join(paragraphs) + "\n", "utf-8")
        wall, _rss, report = run_batch(root, "--chunk-tokens", "64")
        chunks = int(str(report[0]["chunks"]))
        article_s = float(str(report[0]["seconds"]))
        asked = srv.stats()["requests"]
    serial = chunks * args.long_latency
    print(
        f"\n2. one long article: {chunks} chunks, 4 seats, {args.long_latency * 1000:.0f} ms"
        " per request (article s: from reading it to writing it; wall adds process start)"
    )
    print(
        _common.table(
            ["chunks", "requests", "serial s", "article s", "x serial", "process wall s"],
            [[chunks, asked, serial, article_s, article_s / serial, wall]],
        )
    )


def copies(args: argparse.Namespace, tmp: Path) -> None:
    root = tmp / "copies"
    with spawn_fake_server(latency_s=0.2, reply_mode="identity") as srv:
        workspace(root, srv.url, 4)
        src = root / "src"
        src.mkdir()
        for i in range(10):
            (src / f"copy{i}.md").write_text(article(0, paragraphs=6), encoding="utf-8")
        _wall, _rss, report = run_batch(root)
        asked = srv.stats()["requests"]
    chunks = sum(int(str(r["chunks"])) for r in report)
    print("\n3. ten copies of one article in one batch")
    print(
        _common.table(
            ["articles", "chunks", "requests", "distinct chunks"],
            [[10, chunks, asked, chunks // 10]],
        )
    )


def big_article(mb: float) -> str:
    """About ``mb`` MB of Japanese Markdown in one article: a heading every 20 paragraphs,
    no paragraph a copy of another (so no chunk is served by another's answer)."""
    parts = ["---\ntitle: 長い記事\n---\n\n# 長い記事"]
    size, i = 0, 0
    while size < mb * 1e6:
        if i % 20 == 0:
            parts.append(f"## 節{i // 20}")
        picks = [SENTENCES[(i * 5 + k * 3 + i // 12) % len(SENTENCES)] for k in range(6)]
        parts.append(f"段落{i}です。" + "".join(picks).format(n=0, i=i))
        size += len(parts[-1].encode()) + 2
        i += 1
    return "\n\n".join(parts) + "\n"


def single(args: argparse.Namespace, tmp: Path) -> None:
    rows = []
    with spawn_fake_server(latency_s=args.latency, reply_mode="identity") as srv:
        for mb in args.single:
            for kind in ("one article", "small articles")[: 2 if args.small else 1]:
                root = tmp / f"single-{mb}-{kind[0]}"
                workspace(root, srv.url, args.seats)
                src = root / "src"
                src.mkdir()
                if kind == "one article":
                    (src / "big.md").write_text(big_article(mb), encoding="utf-8")
                else:
                    total, n = 0, 0
                    while total < mb * 1e6:
                        text = article(n)
                        (src / f"a{n:06}.md").write_text(text, encoding="utf-8")
                        total, n = total + len(text.encode()), n + 1
                before = srv.stats()["requests"]
                wall, rss, cpu, report = run_batch_cpu(root)
                asked = srv.stats()["requests"] - before
                chunks = sum(int(str(r["chunks"])) for r in report)
                rate = [chunks / wall, asked / wall, cpu / max(chunks, 1) * 1000]
                rows.append([mb, kind, len(report), chunks, asked, wall, *rate, rss])
    print(
        f"\n4. one big article vs the same MB as small articles: {args.seats} seats,"
        f" {args.latency * 1000:.0f} ms per request (wall and CPU: the whole process;"
        " CPU ms/chunk holds still when the host is busy, the rates do not)"
    )
    heads = ["MB", "as", "articles", "chunks", "requests", "wall s", "chunks/s", "requests/s"]
    print(_common.table([*heads, "CPU ms/chunk", "peak RSS MB"], rows))


SECTIONS = {"memory": memory, "long": long_article, "copies": copies, "single": single}


def _sections(value: str) -> list[str]:
    names = value.split(",")
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"no section {unknown[0]!r}: one of {', '.join(SECTIONS)}")
    return names


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            SECTIONS[name](args, Path(tmp))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 5000, 20000]
    )
    p.add_argument("--seats", type=int, default=16)
    p.add_argument("--latency", type=float, default=0.005)
    p.add_argument("--chunks", type=int, default=37)
    p.add_argument("--long-latency", type=float, default=0.3)
    p.add_argument(
        "--single", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 5.0, 50.0]
    )
    p.add_argument(
        "--small",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="4. also as small articles (--no-small: the big articles only)",
    )
    p.add_argument("--only", type=_sections, default=list(SECTIONS))
    main(p.parse_args())
