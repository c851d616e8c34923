"""familiar bench against the fake server in its serving-limit mode: N replies at once,
the rest queued, one piece per token delay. The knee must be found at N, TTFT p99 must
climb past N, failures must be counted, and every seat must be held while it runs."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from familiar.cli.main import main
from familiar.config.slots import Slot
from familiar.fleet import Fleet
from familiar.fleetcheck.bench import run_bench
from familiar.fleetcheck.sweep import Workload
from familiar.ledger import HostLedger, deployment_id
from tests.support.fake_openai import FakeOpenAIServer

LEVEL_KEYS = {
    "concurrency",
    "ok",
    "failed",
    "req_per_s",
    "output_tok_per_s",
    "ttft_ms",
    "tpot_ms",
    "itl_ms",
    "e2e_ms",
}


def workspace(tmp: Path, url: str, parallel: int = 2, extra: str = "") -> str:
    (tmp / "slots.toml").write_text(
        "# the fleet\n"
        f'[slots.naughty]\nurl = "{url}"\nmodel = "fake-model"\nruntime = "vllm"\n'
        f"parallel = {parallel}  # a guess\ntimeout_s = 20\n\n"
        f'[slots.translator]\nurl = "{url}"\nmodel = "t"\nparallel = 1\n{extra}'
    )
    (tmp / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    return str(tmp)


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def bench(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = await asyncio.to_thread(main, ["bench", *argv])
    out = capsys.readouterr()
    try:
        data = json.loads(out.out)
    except ValueError:
        data = out.out
    return code, data, out.err


async def test_the_knee_is_found_at_the_server_capacity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 300 ms answers; 4 requests per level (8 at concurrency 8): concurrency 4 is one
    # wave, 8 is two, served back to back by the server's own queue
    async with FakeOpenAIServer(capacity=4, token_delay_s=0.075, fill_max_tokens=True) as srv:
        ws = workspace(tmp_path, srv.url)
        code, data, err = await bench(
            capsys, "naughty", "--workspace", ws, "--concurrency", "1,2,4,8",
            "--requests", "4", "--output-tokens", "4", "--input-tokens", "16", "--json",
        )  # fmt: skip
        assert code == 0, err
        queue = srv.queue_stats
        bodies = [r["body"] for r in srv.requests]
    assert data["slot"] == "naughty" and data["parallel"] == 2
    levels = data["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2, 4, 8]
    for lv in levels:
        n = max(4, lv["concurrency"])
        assert LEVEL_KEYS <= set(lv)
        assert (lv["ok"], lv["failed"], lv["output_tokens"]) == (n, 0, 4 * n)
        for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            assert set(lv[key]) == {"mean", "p50", "p99"} and lv[key]["p99"] > 0
    assert data["suggested_parallel"] == 4, [lv["output_tok_per_s"] for lv in levels]
    tok = {lv["concurrency"]: lv["output_tok_per_s"] for lv in levels}
    assert tok[4] > 1.5 * tok[2] > 2.25 * tok[1]
    ttft = {lv["concurrency"]: lv["ttft_ms"]["p99"] for lv in levels}
    assert ttft[8] >= 300  # four requests queued behind four 300 ms answers
    assert ttft[8] > max(ttft[1], ttft[2], ttft[4]) + 150
    assert data["knee"]["ttft_p99_climbs_at"] in (2, 4, 8)
    assert abs(levels[0]["tpot_ms"]["mean"] - 75) < 35
    assert queue["max_running"] == 4 and queue["max_queued"] == 4
    assert len(bodies) == 24  # 20 measured, one warm-up before each of the 4 levels
    assert all(b["stream_options"] == {"include_usage": True} and b["ignore_eos"] for b in bodies)
    assert "holding all 2 seats until the bench ends" in err
    assert "concurrency 8: 8 requests ..." in err and "concurrency 1: 4 requests ..." in err


async def test_failures_are_counted_and_their_level_is_not_a_knee(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAIServer(capacity=2, token_delay_s=0.005, fill_max_tokens=True) as srv:
        srv.add_faults([{"kind": "status", "status": 500}] * 2 + [{"kind": "cut", "after": 1}])
        code, data, err = await bench(
            capsys, "naughty", "--workspace", workspace(tmp_path, srv.url),
            "--concurrency", "1,2", "--requests", "8", "--output-tokens", "3", "--json",
            "--no-warmup",
        )  # fmt: skip
    assert code == 0, err
    first, second = data["levels"]
    assert (first["ok"], first["failed"], first["pass_rate"]) == (5, 3, 0.625)
    assert first["errors"] == {"HTTP 500": 2, "no finish_reason (cut off)": 1}
    assert (second["ok"], second["failed"]) == (8, 0)
    assert data["suggested_parallel"] == 2
    assert "3 failed (HTTP 500)" in err


async def test_every_seat_is_held_while_the_bench_runs(tmp_path: Path) -> None:
    async with FakeOpenAIServer(capacity=3, token_delay_s=0.02, fill_max_tokens=True) as srv:
        slot = Slot(name="naughty", url=srv.url, model="fake-model", runtime="vllm", parallel=3)
        session_slot = Slot(name="kg", url=srv.url, model="fake-model", parallel=2)
        slots = {"naughty": slot, "kg": session_slot}
        work = Workload(input_tokens=8, output_tokens=5, requests=8)
        running = asyncio.create_task(run_bench(slots, "naughty", work, [1, 3], home=tmp_path))
        await wait_for(lambda: srv.stats["requests"] > 0)
        (view,) = await HostLedger().views()
        assert view.id == deployment_id((srv.url,), "fake-model")
        assert (view.cap, view.in_use) == (3, 3)
        assert {(h.pid, h.kind) for h in view.holders.values()} == {(os.getpid(), "interactive")}
        # a session's call on the same deployment waits until the bench is done
        async with Fleet({"kg": session_slot}, home=tmp_path) as fleet:
            result = await fleet["kg"].chat([{"role": "user", "content": "a session call"}])
            assert running.done()
        run = await running
        (after,) = await HostLedger().views()
        last = srv.requests[-1]["body"]["messages"][-1]["content"]
    assert after.in_use == 0
    assert last == "a session call" and result.text == "echo: a session call"
    assert [lv.ok for lv in run.levels] == [8, 8]


async def test_save_plot_apply_and_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAIServer(capacity=2, token_delay_s=0.03, fill_max_tokens=True) as srv:
        ws = workspace(tmp_path, srv.url, parallel=1)
        before = (tmp_path / "slots.toml").read_bytes()
        chart = tmp_path / "chart.png"
        args = ["naughty", "--workspace", ws, "--concurrency", "1,2,4", "--requests", "2",
                "--output-tokens", "3", "--input-tokens", "8", "--save"]  # fmt: skip
        code, text, err = await bench(capsys, *args, "--plot", str(chart), "--apply")
        assert code == 0, err
        code, second, err = await bench(capsys, *args, "--json")
        assert code == 0, err
    assert isinstance(text, str)
    knee = int(text.split("suggested parallel = ")[1].split()[0])
    assert knee in (2, 4)  # 2 unless the host is very busy (the exact knee: the test above)
    assert f"parallel = {knee} written to {tmp_path / 'slots.toml'}" in text
    after = (tmp_path / "slots.toml").read_bytes()
    assert after == before.replace(b"parallel = 1  # a guess", b"parallel = %d  # a guess" % knee)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # names sort by second, then a random suffix: two runs in one second sort either way
    saved = sorted((tmp_path / "home" / "bench").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    assert len(saved) == 2 and second["saved"] == str(saved[-1])
    first = json.loads(saved[0].read_text())
    assert first["server"]["model"] == "fake-model" and first["server"]["runtime"] == "vllm"
    assert first["settings"]["output_tokens"] == 3
    code, compared, err = await bench(capsys, "--compare", str(saved[0]), second["id"], "--json")
    assert code == 0, err
    assert [row["concurrency"] for row in compared["levels"]] == [1, 2, 4]
    assert set(compared["levels"][0]["ratio"]) == {
        "output_tok_per_s",
        "ttft_p99",
        "tpot_p99",
        "e2e_p99",
    }
    assert 0.3 < compared["levels"][0]["ratio"]["output_tok_per_s"] < 3
    code, table, err = await bench(capsys, "--compare", str(saved[0]), second["id"])
    assert code == 0 and f"B: {second['id']}" in table and "x = B / A" in table


async def test_prompts_file_is_cycled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "translate this"}\n"summarise that"\n')
    async with FakeOpenAIServer() as srv:
        code, data, err = await bench(
            capsys, "naughty", "--workspace", workspace(tmp_path, srv.url), "--prompts",
            str(prompts), "--concurrency", "2", "--requests", "4", "--json",
        )  # fmt: skip
        asked = [r["body"]["messages"][0]["content"] for r in srv.requests]
    assert code == 0, err
    assert asked[0] == "translate this"  # the warm-up
    assert sorted(asked[1:]) == ["summarise that"] * 2 + ["translate this"] * 2
    assert data["settings"]["prompts"] == 2 and data["settings"]["input_tokens"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "unknown slot 'nope'"),
        (["naughty", "--concurrency", "1,two"], "--concurrency: 'two' is not a whole number"),
        (["naughty", "--concurrency", "0"], "--concurrency: '0': concurrency must be"),
        (["naughty", "--prompts", "p.txt", "--input-tokens", "8"], "exclude each other"),
        (["naughty", "--requests", "0"], "--requests: must be above 0"),
        (["naughty", "--plot", "/no/such/dir/x.png"], "--plot: directory /no/such/dir"),
        ([], "bench needs a SLOT"),
        (["naughty", "--compare", "a", "b"], "--compare takes two saved runs only, not SLOT"),
        (["--compare", "nothing", "saved"], "'nothing' is neither a file nor a saved run id"),
    ],
)
async def test_usage_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    async with FakeOpenAIServer() as srv:
        ws = workspace(tmp_path, srv.url)
        code, _, err = await bench(capsys, *argv, "--workspace", ws)
        assert srv.stats["requests"] == 0
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("familiar: error: ") and message in err, err


async def test_apply_refuses_a_slot_it_cannot_edit_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAIServer() as srv:
        (tmp_path / "slots.toml").write_text(
            f'[slots]\nnaughty = {{ url = "{srv.url}", model = "fake-model", parallel = 2 }}\n'
        )
        (tmp_path / "CLAUDE.md").write_text("familiar: naughty\n")
        before = (tmp_path / "slots.toml").read_bytes()
        code, _, err = await bench(capsys, "naughty", "--workspace", str(tmp_path), "--apply")
        assert srv.stats["requests"] == 0
    assert code == 2 and "is not written as a [slots.naughty] table" in err
    assert (tmp_path / "slots.toml").read_bytes() == before


# -- the fake server's serving limit ------------------------------------------------------


async def test_fake_server_serves_n_at_once_and_queues_the_rest() -> None:
    import httpx

    async with FakeOpenAIServer(capacity=2, token_delay_s=0.05, fill_max_tokens=True) as srv:
        body = {"model": "m", "messages": [{"role": "user", "content": "one two"}], "max_tokens": 3}
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
            task = asyncio.gather(*(client.post("/chat/completions", json=body) for _ in range(4)))
            await wait_for(lambda: srv.queue_stats["queued"] == 2)
            assert srv.queue_stats["running"] == 2
            answers = await task
            streamed = await client.post(
                "/chat/completions",
                json={
                    **body,
                    "stream": True,
                    "max_tokens": 5,
                    "stream_options": {"include_usage": True},
                },
            )
            config = (await client.post(f"{srv.base}/_admin/capacity", json={"capacity": 0})).json()
            bad = await client.post(f"{srv.base}/_admin/capacity", json={"capacity": -1})
            queue = (await client.get(f"{srv.base}/_admin/queue")).json()
        srv.reset()
        reset = srv.queue_stats
    texts = [a.json()["choices"][0]["message"]["content"] for a in answers]
    assert texts == ["echo: one two"] * 4  # three pieces: "echo:", " one", " two"
    assert {a.json()["choices"][0]["finish_reason"] for a in answers} == {"length"}
    assert [a.json()["usage"]["completion_tokens"] for a in answers] == [3] * 4
    events = [line for line in streamed.text.splitlines() if line.startswith("data: {")]
    content = "".join(
        json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
        for e in events
        if json.loads(e[6:])["choices"]
    )
    assert content == "echo: one two echo: one"  # five pieces, the reply repeated
    assert json.loads(events[-1][6:])["usage"]["completion_tokens"] == 5
    assert config == {"capacity": 0, "token_delay_s": 0.05, "fill_max_tokens": True}
    assert bad.status_code == 400
    assert queue["max_running"] == 2 and queue["max_queued"] == 2
    assert reset == {
        "capacity": 2, "token_delay_s": 0.05, "fill_max_tokens": True,
        "running": 0, "queued": 0, "max_running": 0, "max_queued": 0,
    }  # fmt: skip
    with pytest.raises(ValueError):
        FakeOpenAIServer(capacity=-1)


async def test_spawned_fake_server_takes_the_limit_flags() -> None:
    from tests.support.fake_openai import spawn_fake_server

    with spawn_fake_server(capacity=3, token_delay_s=0.01, fill_max_tokens=True) as srv:
        assert srv.queue_stats()["capacity"] == 3
        assert srv.set_capacity(5, token_delay_s=0.0)["capacity"] == 5
        assert srv.queue_stats()["token_delay_s"] == 0.0
