"""Every benchmark in benchmarks/ runs, at tiny sizes, as ``python benchmarks/x.py``.

A benchmark nobody runs breaks unnoticed (``benchmarks/translate.py`` imported a function
that had moved). Each one runs here as a user runs it, in its own process, with sizes
small enough for a few seconds, and must exit 0 having printed its table. A new
benchmark must get its tiny arguments here: the listing test fails until it has them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TINY: dict[str, list[str]] = {
    "batch_scale": [
        "--sizes", "20", "--seats", "4", "--chunks", "5", "--long-latency", "0.01",
        "--single", "0.02",
    ],
    "bench_overhead": ["--requests", "20", "--concurrency", "4", "--rounds", "1"],
    "faults": ["--faults", "2"],
    "ledger": [
        "--calls", "20", "--concurrency", "2", "--rounds", "1", "--per-process", "5",
        "--latency", "0.01",
    ],
    "overhead": ["--calls", "20", "--concurrency", "4", "--rounds", "1"],
    "saturation": ["--items", "10", "--latency", "0.01", "--rounds", "1"],
    "stream": ["--answers", "8", "--tokens", "10", "--concurrency", "4", "--rounds", "1"],
    "telemetry": ["--calls", "20", "--concurrency", "4", "--rounds", "1"],
    "translate": ["--articles", "2", "--seats", "2", "--latency", "0.01"],
    "work_queue": ["--long", "0", "--tiny", "3", "--seats", "2"],
    "seat_pause": ["--ttl", "2", "--pause", "0.5"],
    "session_context": ["--tiny"],
    "mcp_overhead": ["--tiny"],
    "batch_jsonl": [
        "--tiny", "--queue-requests", "40", "--queue-parallel", "4", "--queue-latency", "0.02",
    ],
    "affinity": ["--tiny"],
    "local_threads": [
        "--threads-max", "1", "--tokens", "4", "--rounds", "1", "--prompts", "2",
        "--prompt-words", "20", "--cache-ram", "0",
    ],
    "affinity_real": ["--sessions", "1", "--fanout", "1", "--context", "20", "--repeat", "1"],
    "profile_stream": [
        "--tokens", "10", "--calls", "5", "--cprofile", "--answers", "8", "--concurrency", "4",
    ],
}  # fmt: skip


def benchmarks() -> set[str]:
    """The runnable benchmarks: every script but the ``_`` helpers."""
    return {p.stem for p in (REPO / "benchmarks").glob("*.py") if not p.stem.startswith("_")}


def test_every_benchmark_has_tiny_arguments() -> None:
    assert benchmarks() == set(TINY), "add the new benchmark's tiny arguments to TINY"


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_at_tiny_sizes(name: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAMILIAR_", "OPENAI_"))}
    env |= {"FAMILIAR_HOME": str(tmp_path / "home"), "FAMILIAR_TELEMETRY": "off"}
    env |= {"TMPDIR": str(tmp_path), "FAMILIAR_LEDGER_DIR": str(tmp_path / "ledger")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *TINY[name]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = "-+-" in proc.stdout or "|---" in proc.stdout
    assert table, proc.stdout[-2000:]  # its table was printed
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
