"""The embedded llama-server (Gemma 3 270M from ``familiar[local]``) on a shared host:
tokens/s at ``--threads`` 1..N with the host idle and with one core kept busy, and the
server's peak memory at ``--cache-ram`` 0 / 256 / llama-server's default after N
distinct prompts.

Each configuration is a server of its own, started as ``familiar local up`` starts it
(``LocalServer.command``: same binary, model, seats and flags), on a free port, stopped
after. Tokens/s: one unmeasured request, then ``--rounds`` requests of ``--tokens``
tokens (``ignore_eos``, no prompt cache), one at a time; reported are llama-server's own
decode rate (``timings.predicted_per_second``) and the wall rate (tokens over the
request's time), medians. "busy": a Python loop in a subprocess (``while True: pass``)
runs the whole time. Memory: ``--prompts`` distinct prompts of ``--prompt-words`` words,
4 in flight over the 4 seats, 8 tokens each; VmHWM (peak RSS) and VmRSS of the server
from ``/proc``.

    python benchmarks/local_threads.py [--threads-max NPROC] [--tokens 64] [--rounds 3]
        [--prompts 64] [--prompt-words 400] [--cache-ram 0,256,default]

The machine's load average is printed with the tables: other processes on the host
change the figures (the point of the "busy" column is to make one such process known).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import _common  # puts the repo on sys.path
import httpx

from familiar.local import (
    HOST,
    LocalServer,
    default_threads,
    find_model,
    find_server_binary,
    free_port,
)

WORDS = (
    "river stone cloud market window garden paper letter engine summer violin harbor"
    " lantern meadow copper silent orange planet mirror forest candle bridge thunder"
).split()


def status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@contextlib.asynccontextmanager
async def server(threads: int, cache_ram: str, home: Path) -> AsyncIterator[tuple[str, int]]:
    """A llama-server started as ``familiar local up`` would (``cache_ram`` "default":
    without ``--cache-ram``); yields (base URL, pid)."""
    binary, model, port = find_server_binary(), find_model(), free_port()
    mib = 0 if cache_ram == "default" else int(cache_ram)
    cmd = LocalServer(home, threads=threads, cache_ram_mib=mib).command(binary, model, port)
    if cache_ram == "default":
        at = cmd.index("--cache-ram")
        del cmd[at : at + 2]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(binary.parent), env.get("LD_LIBRARY_PATH", "")) if p
    )
    log = (home / f"server-{threads}-{cache_ram}.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)  # noqa: ASYNC220
    url = f"http://{HOST}:{port}"
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"llama-server exited {proc.returncode}: see {log.name}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url + "/health")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("llama-server not ready in 180 s")
                await asyncio.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def busy_core(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it take its core
        yield
    finally:
        loop.kill()
        loop.wait()


async def decode_rate(url: str, tokens: int, rounds: int) -> tuple[float, float]:
    """(server decode tokens/s, wall tokens/s), medians of ``rounds`` requests."""
    body = {
        "prompt": "Write a long story about a lighthouse keeper and the sea.",
        "n_predict": tokens,
        "ignore_eos": True,
        "cache_prompt": False,
        "temperature": 0,
    }
    server, wall = [], []
    async with httpx.AsyncClient(timeout=900) as client:
        for i in range(rounds + 1):
            start = time.perf_counter()
            resp = await client.post(url + "/completion", json=body)
            took = time.perf_counter() - start
            resp.raise_for_status()
            data = resp.json()
            if i == 0:
                continue  # warm-up: not measured
            timings = data.get("timings") or {}
            server.append(float(timings.get("predicted_per_second") or 0.0))
            wall.append(int(timings.get("predicted_n") or tokens) / took)
    return statistics.median(server), statistics.median(wall)


async def fill_cache(url: str, prompts: int, words: int) -> None:
    gate = asyncio.Semaphore(4)
    async with httpx.AsyncClient(timeout=900) as client:

        async def one(i: int) -> None:
            text = " ".join(WORDS[(i * 7 + k * (i % 5 + 1)) % len(WORDS)] for k in range(words))
            body = {"prompt": f"Prompt {i}: {text}", "n_predict": 8, "temperature": 0}
            async with gate:
                (await client.post(url + "/completion", json=body)).raise_for_status()

        await asyncio.gather(*(one(i) for i in range(prompts)))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads-max", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--tokens", type=int, default=64, help="tokens per timed request")
    ap.add_argument("--rounds", type=int, default=3, help="timed requests per configuration")
    ap.add_argument("--prompts", type=int, default=64, help="distinct prompts for memory")
    ap.add_argument("--prompt-words", type=int, default=400)
    ap.add_argument("--cache-ram", default="0,256,default", help="MiB values, or default")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"host: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        rows = []
        for threads in range(1, args.threads_max + 1):
            row: list[object] = [threads]
            for busy in (False, True):
                with busy_core(busy):
                    async with server(threads, "256", home) as (url, _pid):
                        dec, wall = await decode_rate(url, args.tokens, args.rounds)
                row += [round(dec, 1), round(wall, 1)]
                print(f"  threads {threads} {'busy' if busy else 'idle'}: {dec:.1f} tok/s",
                      file=sys.stderr, flush=True)  # fmt: skip
            rows.append(row)
        print(f"\ntokens/s generating {args.tokens} tokens, median of {args.rounds}")
        headers = ["threads", "idle decode", "idle wall", "1 core busy decode", "busy wall"]
        print(_common.table(headers, rows))
        mem = []
        for cache in args.cache_ram.split(","):
            async with server(default_threads(), cache, home) as (url, pid):
                start = status_kib(pid, "VmRSS") or 0
                began = time.perf_counter()
                await fill_cache(url, args.prompts, args.prompt_words)
                took = time.perf_counter() - began
                peak, now = status_kib(pid, "VmHWM") or 0, status_kib(pid, "VmRSS") or 0
            mem.append([cache, start // 1024, peak // 1024, now // 1024, round(took, 1)])
            print(f"  cache-ram {cache}: peak {peak // 1024} MiB", file=sys.stderr, flush=True)
        print(
            f"\nllama-server memory (MiB) after {args.prompts} distinct prompts of"
            f" {args.prompt_words} words (threads {default_threads()}, 4 seats)"
        )
        print(_common.table(["--cache-ram", "RSS at start", "peak RSS", "RSS after", "s"], mem))
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
