"""The JetStream work queue: one worker vs two, and the queue's cost per job.

A zero-latency fake translator (own process, identity replies streamed in small
pieces) makes the familiar processes, not the server, the bottleneck: each answer is
parsed, validated and reassembled by a worker. Every run gets a fresh nats-server
(``-js``, its own store) and fresh FAMILIAR_HOMEs, so nothing comes from a cache.

* ``local``: ``familiar translate`` (one process, no queue)
* ``queue xN``: N ``familiar worker`` processes already running, timed from
  ``familiar translate --nats`` start to its exit (submit, run, collect, write)

Two batches: ``long`` (articles of many long paragraphs: the workers' CPU is the
bottleneck, so two workers should beat one) and ``tiny`` (one-line articles: the
difference to ``local`` per article is the queue's overhead per job).

    python benchmarks/work_queue.py [--long 32] [--tiny 200] [--seats 8]  (0: leave it out)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

# this file is named like the stdlib's queue module: keep its directory off the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

from tests.support.fake_openai import spawn_fake_server  # noqa: E402
from tests.support.nats import NatsServer  # noqa: E402

#: words apart, so that the fake server streams the answer in many small pieces
PARA = " ".join(
    "お湯を 沸かして、 少し 冷まして から 茶葉に 注ぎます。 詳しくは [公式サイト](https://example.com)"
    " を 見て ください。 `temp = 80` を 目安に します。".split()
)


def write_batch(src: Path, kind: str, n: int) -> None:
    src.mkdir(parents=True)
    for i in range(n):
        if kind == "long":
            parts = [f"# 記事{i}\n"] + [f"## 見出し{s}\n\n{PARA * 6}\n" for s in range(8)]
            text = "\n".join(parts)
        else:
            text = f"# 記事{i}\n\nお茶{i}を淹れます。\n"
        (src / f"a{i}.md").write_text(text, encoding="utf-8")


def workspace(root: Path, url: str, seats: int) -> Path:
    root.mkdir(parents=True)
    (root / "slots.toml").write_text(
        f'[slots.translator]\nurl = "{url}"\nmodel = "m"\nruntime = "vllm"\n'
        f"parallel = {seats}\ntimeout_s = 120\n"
        f'[slots.naughty]\nurl = "{url}"\nmodel = "m"\nparallel = 1\n'
    )
    (root / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    return root


def env(home: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("FAMILIAR_")}
    out["PYTHONPATH"] = str(_common.REPO)
    return {**out, "FAMILIAR_HOME": str(home), "FAMILIAR_TELEMETRY": "off"}


def familiar(ws: Path, home: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "familiar", *args, "--workspace", str(ws)]


def run_local(ws: Path, src: Path, tag: str) -> float:
    t0 = time.perf_counter()
    out = str(ws / f"out-{tag}")
    cmd = familiar(ws, tag, "translate", str(src), "--from", "ja", "--to", "en", "--out", out)
    subprocess.run(cmd, cwd=ws, env=env(ws / f".home-{tag}"), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run_queue(ws: Path, src: Path, tag: str, workers: int, store: Path) -> float:
    server = NatsServer(store)
    server.start()
    procs = []
    try:
        for i in range(workers):
            cmd = familiar(ws, tag, "worker", "--nats", server.url, "-v")
            proc = subprocess.Popen(
                cmd, cwd=ws, env=env(ws / f".home-{tag}-w{i}"), stderr=subprocess.PIPE, text=True
            )
            procs.append(proc)
            assert proc.stderr is not None
            while "worker ready" not in proc.stderr.readline():  # warmed up
                assert proc.poll() is None, "worker died"
        out = ws / f"out-{tag}"
        cmd = familiar(
            ws, tag, "translate", str(src), "--from", "ja", "--to", "en", "--out", str(out)
        )
        t0 = time.perf_counter()
        subprocess.run(
            [*cmd, "--nats", server.url],
            cwd=ws,
            env=env(ws / f".home-{tag}-s"),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - t0
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.communicate(timeout=30)
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--long", type=int, default=32, help="long articles")
    ap.add_argument("--tiny", type=int, default=200, help="one-line articles")
    ap.add_argument("--seats", type=int, default=8, help="the translator's parallel")
    args = ap.parse_args()
    rows: list[list[object]] = []
    ratios: list[str] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        spawn_fake_server(reply_mode="identity", token_delay_s=0.0) as fake,
    ):
        root = Path(tmp)
        ws = workspace(root / "ws", fake.url, args.seats)
        for kind, n in (("long", args.long), ("tiny", args.tiny)):
            if not n:  # --long 0 / --tiny 0: that batch is left out
                continue
            src = ws / f"src-{kind}"
            write_batch(src, kind, n)
            local = run_local(ws, src, f"{kind}-local")
            one = run_queue(ws, src, f"{kind}-q1", 1, root / f"nats-{kind}-1")
            two = run_queue(ws, src, f"{kind}-q2", 2, root / f"nats-{kind}-2")
            ratios.append(f"{kind} {one / two:.2f}x")
            for label, took in (("local", local), ("queue x1", one), ("queue x2", two)):
                rows.append(
                    [
                        kind,
                        n,
                        label,
                        took,
                        n / took,
                        local / took,
                        (took - local) / n * 1000 if label != "local" else 0.0,
                    ]
                )
    headers = ["batch", "articles", "run", "seconds", "articles/s", "vs local", "ms/job vs local"]
    print(_common.table(headers, rows))
    print(f"two workers vs one: {', '.join(ratios)}")


if __name__ == "__main__":
    main()
