"""The fault matrix: each way a server misbehaves, through whole commands, as a table.

For every fault the loopback fake server can inject, run ``familiar translate`` (4
articles through an identity translator, so a correct output is byte-identical to its
source) and ``familiar run`` (a scripted 3-subtask session) as real subprocesses, and
count what a user keeps:

* ok: the article's bytes / the subtask's output are exactly right, status ok;
* flagged: the failure is reported (status failed/error, exit 1), nothing wrong kept;
* wrong: reported ok but the bytes / output are not what the server finished saying
  (cut, empty, ...): passed off as done;
* leaked: files or output holding the configured API key.

``--src DIR`` runs another checkout's familiar (e.g. a worktree of an older commit)
against the same fake server, for a before/after table.

    python benchmarks/faults.py [--src DIR] [--faults N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import REPO, table

from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import SessionScript

KEY = "zq-7f3c9e2b8a41d6e5-secret"
DEAD = "http://127.0.0.1:9/v1"  # the discard port: connection refused
ARTICLE = """# 記事{n}のタイトル

これは記事{n}の最初の段落です。[リンク](https://example.com/{n}) を見てください。

## 記事{n}の二つ目の見出し

記事{n}の二つ目の段落には `code` と **強調** があります。長い文章が続きます。

記事{n}の最後の段落です。ありがとうございました。
"""  # every chunk distinct: no request saved by the cache, so counts are exact
PLAN = {
    "goal": "A guide to the Frobnicator",
    "decisions": ["Call it 'the frob'"],
    "subtasks": [
        {"id": f"s{i}", "title": f"Part {i}", "instructions": f"Write part {i}",
         "acceptance": "", "depends_on": [], "difficulty": "hard"}
        for i in (1, 2, 3)
    ],
}  # fmt: skip
OUTPUTS = {"s1": "Plug the frob in.", "s2": "Press the frob's button.", "s3": "Unplug it."}

FAULTS: list[tuple[str, dict[str, Any], int]] = [  # (name, fault, how many in a row)
    ("none", {}, 0),
    ("cut stream (no finish_reason)", {"kind": "cut", "after": 2}, 1),
    ("cut stream, every attempt", {"kind": "cut", "after": 2}, 10_000),
    ("empty choices", {"kind": "empty_choices"}, 1),
    ("empty content, every attempt", {"kind": "empty"}, 10_000),
    ("trickle past timeout_s", {"kind": "trickle", "interval_s": 0.3, "min_pieces": 20}, 1),
    ("reset mid-stream", {"kind": "reset_mid", "after": 2}, 1),
    ("malformed body", {"kind": "malformed"}, 1),
    ("HTTP 500", {"kind": "status", "status": 500}, 1),
    ("HTTP 503", {"kind": "status", "status": 503}, 1),
    ("HTTP 429 + Retry-After", {"kind": "status", "status": 429, "retry_after": 0.2}, 1),
    ("hang (no byte)", {"kind": "hang"}, 1),
    ("echoed API key (401)", {"kind": "echo_key"}, 1),
]


def slots(url: str, extra_url: str | None = None) -> str:
    urls = json.dumps([extra_url, url] if extra_url else [url])
    return "".join(
        f'[slots.{n}]\nurl = {urls}\nmodel = "m"\nruntime = "vllm"\nparallel = 2\n'
        f'timeout_s = 2\napi_key_env = "FAULT_KEY"\n'
        for n in ("translator", "naughty", "grandpa")
    )


async def command(src: Path, ws: Path, home: Path, *argv: str) -> tuple[int, str, str]:
    env = {**os.environ, "FAMILIAR_HOME": str(home), "FAULT_KEY": KEY, "FAMILIAR_TELEMETRY": "off"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "familiar", *argv, "--workspace", str(ws),
        cwd=src, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return int(proc.returncode or 0), out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def leaked(root: Path, text: str) -> int:
    hits = int(KEY in text)
    for p in root.rglob("*"):
        if p.is_file() and KEY.encode() in p.read_bytes():
            hits += 1
    return hits


async def translate_case(src: Path, fault: dict[str, Any], n: int, dead: bool) -> list[Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws, home, arts = root / "ws", root / "home", root / "ws" / "in"
        arts.mkdir(parents=True)
        texts = {f"a{i}.md": ARTICLE.format(n=i) for i in range(4)}
        for name, text in texts.items():
            (arts / name).write_text(text, encoding="utf-8")
        async with FakeOpenAIServer(reply_mode="identity") as srv:
            (ws / "slots.toml").write_text(
                slots(srv.url, "http://127.0.0.1:9/v1" if dead else None)
            )
            (ws / "CLAUDE.md").write_text("familiar: naughty x translator\n")
            if n:
                srv.add_faults([fault] * min(n, 10_000))
            code, text, err = await command(
                src, ws, home, "translate", str(arts), "--to", "en", "--out", str(root / "out"),
                "--chunk-tokens", "32", "--json",
            )  # fmt: skip
            requests = srv.stats["requests"]
        ok = flagged = wrong = 0
        try:
            rows = {Path(r["path"]).name: r for r in json.loads(text)["articles"]}
        except ValueError:
            rows = {}
        for name, source in texts.items():
            out = root / "out" / name
            status = rows.get(name, {}).get("status")
            if status == "ok" and out.exists() and out.read_text(encoding="utf-8") == source:
                ok += 1
            elif status == "ok":
                wrong += 1
            else:
                flagged += 1
        return [ok, flagged, wrong, requests, code, leaked(root, text + err)]


async def run_case(src: Path, fault: dict[str, Any], n: int, dead: bool) -> list[Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws, home = root / "ws", root / "home"
        ws.mkdir()
        async with FakeOpenAIServer() as srv:
            srv.handler = SessionScript(PLAN, OUTPUTS, "THE GUIDE")
            (ws / "slots.toml").write_text(
                slots(srv.url, "http://127.0.0.1:9/v1" if dead else None)
            )
            (ws / "CLAUDE.md").write_text("familiar: grandpa x naughty\n")
            if n:
                srv.add_faults([{"kind": "reply", "text": json.dumps(PLAN)}, *[fault] * n])
            code, text, err = await command(src, ws, home, "run", "Write a frob guide", "--json")
            requests = srv.stats["requests"]
        ok = flagged = wrong = 0
        (d,) = (home / "sessions").iterdir()
        for sid, expected in OUTPUTS.items():
            path = d / "subtasks" / f"{sid}.json"
            rec = json.loads(path.read_text()) if path.exists() else {}
            if rec.get("status") == "ok" and rec.get("output") == expected:
                ok += 1
            elif rec.get("status") == "ok":
                wrong += 1
            else:
                flagged += 1
        return [ok, flagged, wrong, requests, code, leaked(root, text + err)]


async def main(src: Path, first: int | None) -> None:
    rows = []
    for name, fault, n in [*FAULTS, ("dead replica (refused)", {}, -1)][:first]:
        dead = n == -1
        t = await translate_case(src, fault, max(n, 0), dead)
        r = await run_case(src, fault, max(n, 0), dead)
        rows.append([name, *t, *r])
        print(f"  {name}: done", file=sys.stderr)
    print(f"fault matrix for {src} (translate: 4 articles; run: 3 subtasks)")
    heads = ["ok", "flagged", "wrong", "requests", "exit", "leaks"]
    print(table(["fault", *(f"tr {h}" for h in heads), *(f"run {h}" for h in heads)], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=REPO, help="the familiar checkout to run")
    parser.add_argument("--faults", type=int, help="only the first N rows of the matrix")
    args = parser.parse_args()
    asyncio.run(main(args.src.resolve(), args.faults))
