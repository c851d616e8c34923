"""``familiar bench --rate``: the open loop against the fake server, which measures when
each request arrives and how many are in flight."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from familiar.cli.main import main
from familiar.fleetcheck.openloop import parse_rates
from tests.support.fake_openai import FakeOpenAIServer


def workspace(tmp: Path, url: str, parallel: int = 3) -> str:
    (tmp / "slots.toml").write_text(
        f'[slots.naughty]\nurl = "{url}"\nmodel = "fake-model"\nruntime = "vllm"\n'
        f"parallel = {parallel}\ntimeout_s = 20\n"
    )
    (tmp / "CLAUDE.md").write_text("familiar: naughty\n")
    return str(tmp)


async def bench(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = await asyncio.to_thread(main, ["bench", *argv])
    out = capsys.readouterr()
    try:
        data = json.loads(out.out)
    except ValueError:
        data = out.out
    return code, data, out.err


async def test_arrivals_are_poisson_at_the_rate_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAIServer(capacity=8, token_delay_s=0.005, fill_max_tokens=True) as srv:
        code, data, err = await bench(
            capsys, "naughty", "--workspace", workspace(tmp_path, srv.url), "--rate", "20",
            "--requests", "80", "--output-tokens", "2", "--input-tokens", "8", "--json",
            "--no-warmup",
        )  # fmt: skip
        assert code == 0, err
        arrivals = [r["at"] for r in srv.requests]
        most = srv.stats["max_in_flight"]
    assert len(arrivals) == 80
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    mean = sum(gaps) / len(gaps)
    assert 0.6 / 20 < mean < 1.6 / 20, mean  # 1/R = 50 ms, generously
    # Poisson, not a metronome: the gaps vary about as much as they are long
    spread = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5
    assert spread > 0.4 * mean, (spread, mean)
    (level,) = data["levels"]
    assert level["request_rate"] == 20 and level["ok"] == 80 and level["failed"] == 0
    assert 0.6 * 20 < level["achieved_rate"] < 1.6 * 20
    assert level["concurrency"] == 3 and 1 <= level["max_in_flight"] <= 3
    assert most <= 3
    assert data["settings"]["request_rate"] == ["20"] and data["suggested_parallel"] is None
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert level[key]["p99"] > 0
    assert "rate 20/s: 80 requests, at most 3 in flight ..." in err


async def test_inf_sends_at_once_but_never_more_than_the_seats_held(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # answers of 8 x 20 ms: twelve arriving at once would all be in flight without a cap
    async with FakeOpenAIServer(capacity=16, token_delay_s=0.02, fill_max_tokens=True) as srv:
        ws = workspace(tmp_path, srv.url)
        code, data, err = await bench(
            capsys, "naughty", "--workspace", ws, "--rate", "inf,5", "--requests", "12",
            "--output-tokens", "8", "--input-tokens", "8", "--json", "--save",
        )  # fmt: skip
        assert code == 0, err
        most = srv.stats["max_in_flight"]
        assert srv.stats["requests"] == 2 * 12 + 2  # a warm-up request before each rate
    assert most == 3  # the seats the bench holds (parallel = 3), reached and never passed
    slow, burst = data["levels"]
    assert (slow["request_rate"], burst["request_rate"]) == (5, "inf")
    assert burst["max_in_flight"] == 3 and burst["ok"] == 12
    assert slow["achieved_rate"] < burst["achieved_rate"]
    # a cap of one --concurrency instead of the seats
    async with FakeOpenAIServer(capacity=16, token_delay_s=0.02, fill_max_tokens=True) as srv:
        code, text, err = await bench(
            capsys, "naughty", "--workspace", workspace(tmp_path, srv.url), "--rate", "inf",
            "--concurrency", "2",
            "--requests", "6", "--output-tokens", "4", "--input-tokens", "8", "--save",
        )  # fmt: skip
        assert code == 0, err
        assert srv.stats["max_in_flight"] == 2
    assert "open loop, Poisson arrivals" in text and "sent/s" in text
    assert "output tok/s" not in text  # no terminal chart without a terminal
    row = next(line for line in text.splitlines() if line.startswith("inf "))
    assert " 2/2 " in row, row
    second = err.split("saved as ")[1].split()[0]
    code, _, err = await bench(capsys, "--workspace", ws, "--compare", data["id"], second)
    assert code == 2 and "not open-loop (--rate) runs" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--rate", "0"), "--rate: '0': a rate must be above 0"),
        (("--rate", "fast"), "--rate: 'fast' is not a number"),
        (("--rate", "1,,2"), "--rate: empty item"),
        (("--rate", "1", "--concurrency", "1,2"), "--rate takes one --concurrency"),
        (("--rate", "1", "--apply"), "--apply is for a concurrency sweep"),
    ],
)
async def test_bad_rates_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, _, err = await bench(
        capsys, "naughty", "--workspace", workspace(tmp_path, "http://127.0.0.1:9/v1"), *args
    )
    assert code == 2 and message in err and "Traceback" not in err


def test_parse_rates() -> None:
    assert parse_rates("2, 0.5,inf,2") == [0.5, 2.0, float("inf")]
    with pytest.raises(ValueError, match="nan"):
        parse_rates("nan")
