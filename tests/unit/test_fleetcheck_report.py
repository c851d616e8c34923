"""The bench and compare tables."""

from __future__ import annotations

from typing import Any

from familiar.fleetcheck.knee import find_knee
from familiar.fleetcheck.report import bench_text, compare_text, table
from familiar.fleetcheck.results import Level
from familiar.fleetcheck.stats import Summary


def _level(c: int, tok_s: float, p99: float) -> Level:
    s = Summary(p99 / 2, p99 / 2, p99)
    return Level(
        c, ok=8, failed=0, duration_s=1.0, output_tokens=round(tok_s), ttft=s, tpot=s, itl=s, e2e=s
    )


def _run(levels: list[Level], run_id: str) -> dict[str, Any]:
    knee = find_knee(levels)
    return {
        "id": run_id,
        "slot": "naughty",
        "model": "gemma",
        "runtime": "vllm",
        "url": ["http://h/v1"],
        "parallel": 3,
        "server": {"version": "0.11.0"},
        "levels": [lv.to_json() for lv in levels],
        "suggested_parallel": knee.suggested,
        "knee": knee.to_json(),
    }


def test_table_groups_sit_over_their_columns() -> None:
    text = table(["c", "mean", "p99"], [["1", "10.0", "12.5"]], [(1, 2, "TTFT")])
    top, header = text.splitlines()[:2]
    assert top.index("TTFT") >= header.index("mean") - 1
    assert header.split() == ["c", "mean", "p99"]


def test_bench_text_names_the_knee() -> None:
    levels = [_level(1, 100, 20), _level(2, 200, 20), _level(4, 390, 25), _level(8, 400, 200)]
    text = bench_text(_run(levels, "r1"), levels)
    assert "bench naughty: gemma (vllm 0.11.0) at http://h/v1" in text
    assert "suggested parallel = 4  (configured: 3;" in text
    assert "TTFT p99 climbs from concurrency 8 on" in text
    for name in ("TTFT ms", "TPOT ms", "ITL ms", "E2E ms"):
        assert name in text
    rising = levels[:3]
    assert "sweep higher" in bench_text(_run(rising, "r2"), rising)


def test_compare_text_has_ratios_per_shared_level() -> None:
    a = [_level(1, 100, 20), _level(2, 200, 40)]
    b = [_level(1, 150, 10), _level(4, 300, 30)]
    text = compare_text(_run(a, "before"), a, _run(b, "after"), b)
    row = next(line for line in text.splitlines() if line.startswith("1 "))
    assert row.split()[:5] == ["1", "100.0", "150.0", "1.50", "20.0"]
    assert "0.50" in row  # TTFT p99 halved
    assert "levels measured by one run only: 2, 4" in text
    assert text.startswith("A: before") and "B: after" in text
