"""familiar batch against a plain asyncio + AsyncOpenAI loop, side by side.

A fake server (own process, ``--latency`` per answer) serves N chat requests; both
sides run as their own processes at the same concurrency (the slot's ``parallel``):
``familiar batch`` (seats in the host ledger, finished-answer checks, results streamed
to disk) and a minimal loop (a semaphore, AsyncOpenAI, results written at the end).
Prints requests/s, the ratio, and each process's peak RSS, for each N.

Then the work queue (``--queue-requests``): the same requests through ``familiar batch
--nats`` and one, then two, ``familiar worker`` processes (a fresh nats-server each time),
against a local ``familiar batch`` at the same cap. The fake server answers after
``--queue-latency`` so the seats, not the CPU, bound the rate; both workers share the
deployment's cap (``--queue-parallel``) through the host ledger, so a second worker should
add nothing but must not break the cap: the table shows requests/s (from the batch's own
report, start-up excluded) and the most requests the server saw at once.

    python benchmarks/batch_jsonl.py [--requests 10000,100000] [--parallel 64] [--tiny]
        [--queue-requests 1000] [--queue-parallel 16] [--queue-latency 0.2] [--only queue]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # puts the repo on sys.path

from tests.support.fake_openai import spawn_fake_server
from tests.support.nats import NatsServer

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


def write_requests(src: Path, n: int) -> None:
    with src.open("w") as fh:
        for i in range(n):
            body = {"model": "naughty", "messages": [{"role": "user", "content": f"q{i}"}]}
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(json.dumps({**line, "body": body}) + "\n")


def timed_batch(ws: Path, env: dict[str, str], src: Path, out: Path, *extra: str) -> float:
    """``familiar batch`` to the end; its own requests/s (start-up excluded)."""
    argv = [sys.executable, "-m", "familiar", "batch", "--workspace", str(ws), str(src)]
    argv += ["--out", str(out), "--force", "--role", "naughty", "--json", *extra]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"familiar batch {' '.join(extra)} failed: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    assert report["ok"] == report["requests"], report
    return float(report["requests_per_s"])


def start_worker(ws: Path, env: dict[str, str], url: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "familiar", "worker", "--workspace", str(ws), "--nats", url]
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=fh)
    deadline = time.monotonic() + 60
    while "worker ready" not in log.read_text():  # warmed up, its consumer bound
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def queue_rows(n: int, parallel: int, latency: float, tmp: Path) -> list[list[object]]:
    """Local, then 1 and 2 workers over the queue: requests/s and the most in flight."""
    rows: list[list[object]] = []
    with spawn_fake_server(latency_s=latency) as srv:
        ws = tmp / "queue"
        ws.mkdir()
        (ws / "slots.toml").write_text(
            f'[slots.naughty]\nurl = "{srv.url}"\nmodel = "m"\nruntime = "vllm"\n'
            f'parallel = {parallel}\n[slots.translator]\nurl = "{srv.url}"\nmodel = "t"\n'
            "parallel = 1\n"
        )
        (ws / "CLAUDE.md").write_text("familiar: naughty x translator\n")
        src = ws / "req.jsonl"
        write_requests(src, n)
        base = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FAMILIAR_")},
            "PYTHONPATH": str(_common.REPO),
            "FAMILIAR_TELEMETRY": "off",
            "FAMILIAR_LEDGER_DIR": str(ws / "ledger"),  # one host: every process shares the cap
        }

        def env(name: str) -> dict[str, str]:
            return {**base, "FAMILIAR_HOME": str(ws / f"home-{name}")}

        def busy(rate: float) -> object:  # the share of the cap kept busy
            return rate * latency / parallel if latency > 0 else "-"

        rate = timed_batch(ws, env("local"), src, ws / "local.jsonl")
        rows.append(["local", n, parallel, rate, busy(rate), srv.stats()["max_in_flight"]])
        for workers in (1, 2):
            srv.reset()
            server = NatsServer(tmp / f"nats-{workers}")
            server.start()
            procs = []
            try:
                for i in range(workers):
                    log = ws / f"worker-{workers}-{i}.log"
                    procs.append(start_worker(ws, env(f"w{workers}-{i}"), server.url, log))
                out = ws / f"queue-{workers}.jsonl"
                rate = timed_batch(ws, env(f"s{workers}"), src, out, "--nats", server.url)
            finally:
                for proc in procs:
                    proc.send_signal(signal.SIGTERM)
                for proc in procs:
                    proc.wait(timeout=30)
                server.stop()
            label = f"queue, {workers} worker{'s' if workers > 1 else ''}"
            rows.append([label, n, parallel, rate, busy(rate), srv.stats()["max_in_flight"]])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", default="10000,100000")
    ap.add_argument("--parallel", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--queue-requests", type=int, default=1000, help="0: no queue runs")
    ap.add_argument("--queue-parallel", type=int, default=16)
    ap.add_argument("--queue-latency", type=float, default=0.2)
    ap.add_argument("--only", choices=("plain", "queue"), help="one of the two tables")
    ap.add_argument("--tiny", action="store_true", help="a smoke run of the first table (50)")
    args = ap.parse_args()
    if args.only != "queue":
        plain_table(args)
    if args.only != "plain" and args.queue_requests > 0:
        with tempfile.TemporaryDirectory() as tmp:
            rows = queue_rows(
                args.queue_requests, args.queue_parallel, args.queue_latency, Path(tmp)
            )
        print()
        print(
            _common.table(["run", "requests", "cap", "req/s", "cap busy", "most in flight"], rows)
        )


def plain_table(args: argparse.Namespace) -> None:
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
            write_requests(src, n)
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
