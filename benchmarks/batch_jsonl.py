"""familiar batch against a plain asyncio + AsyncOpenAI loop, side by side.

A fake server (own process, ``--latency`` per answer) serves N chat requests; both
sides run as their own processes at the same concurrency (the slot's ``parallel``):
``familiar batch`` (seats in the host ledger, finished-answer checks, results streamed
to disk) and a minimal loop (a semaphore, AsyncOpenAI, results written at the end).
Prints requests/s, the ratio, and each process's peak RSS, for each N.

    python benchmarks/batch_jsonl.py [--requests 10000,100000] [--parallel 64] [--tiny]
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

import _common  # puts the repo on sys.path

from tests.support.fake_openai import spawn_fake_server

BASELINE = r"""
import asyncio, json, sys
from openai import AsyncOpenAI
src, out, url, par = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
async def main():
    client = AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    sem = asyncio.Semaphore(par)
    async def one(line):
        req = json.loads(line)
        async with sem:
            r = await client.chat.completions.create(model="m", messages=req["body"]["messages"])
        return json.dumps({"custom_id": req["custom_id"], "text": r.choices[0].message.content})
    with open(src) as fh:
        lines = fh.readlines()
    results = await asyncio.gather(*(one(l) for l in lines))
    with open(out, "w") as fh:
        fh.write("\n".join(results))
asyncio.run(main())
"""


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and the child's peak RSS in MB."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, ru = os.wait4(proc.pid, 0)[1:]
    took = time.perf_counter() - t0
    if proc.returncode not in (0, None):
        raise SystemExit(f"{argv[:4]} failed: {proc.stderr.read() if proc.stderr else ''}")
    return took, ru.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", default="10000,100000")
    ap.add_argument("--parallel", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--tiny", action="store_true", help="a smoke run (50 requests)")
    args = ap.parse_args()
    sizes = [50] if args.tiny else [int(n) for n in args.requests.split(",")]
    rows = []
    with spawn_fake_server(latency_s=args.latency) as srv, tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        (ws / "slots.toml").write_text(
            f'[slots.naughty]\nurl = "{srv.url}"\nmodel = "m"\nruntime = "vllm"\n'
            f"parallel = {args.parallel}\n"
        )
        (ws / "CLAUDE.md").write_text("familiar: naughty\n")
        env = {
            **os.environ,
            "PYTHONPATH": str(_common.REPO),
            "FAMILIAR_HOME": str(ws / "home"),
            "FAMILIAR_LEDGER_DIR": str(ws / "ledger"),
            "FAMILIAR_TELEMETRY": "off",
        }
        for n in sizes:
            src = ws / f"req{n}.jsonl"
            with src.open("w") as fh:
                for i in range(n):
                    body = {"model": "naughty", "messages": [{"role": "user", "content": f"q{i}"}]}
                    line = {
                        "custom_id": f"r{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                    fh.write(json.dumps(line) + "\n")
            fam_s, fam_mb = run(
                [
                    sys.executable,
                    "-m",
                    "familiar",
                    "batch",
                    "--workspace",
                    str(ws),
                    str(src),
                    "--out",
                    str(ws / f"fam{n}.jsonl"),
                    "--force",
                    "--role",
                    "naughty",
                ],
                env,
            )
            base_s, base_mb = run(
                [
                    sys.executable,
                    "-c",
                    BASELINE,
                    str(src),
                    str(ws / f"base{n}.jsonl"),
                    srv.url,
                    str(args.parallel),
                ],
                env,
            )
            ok = sum(1 for _ in (ws / f"fam{n}.jsonl").open())
            assert ok == n, f"familiar wrote {ok} of {n} result lines"
            rows.append([n, n / fam_s, n / base_s, base_s / fam_s, fam_mb, base_mb])
    print(
        _common.table(
            [
                "requests",
                "familiar req/s",
                "plain loop req/s",
                "x plain",
                "familiar RSS MB",
                "plain RSS MB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
