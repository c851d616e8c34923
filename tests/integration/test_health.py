"""familiar health against fake servers on loopback: exit codes, JSON, seats, telemetry,
--watch."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from familiar.cli.main import main
from familiar.ledger import HostLedger, deployment_id, deployment_label
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.fake_vector import FakeVector


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def workspace(tmp: Path, naughty: str, translator: str) -> str:
    (tmp / "slots.toml").write_text(
        f'[slots.naughty]\nurl = "{naughty}"\nmodel = "fake-model"\nruntime = "vllm"\n'
        "parallel = 2\n"
        f'[slots.translator]\nurl = "{translator}"\nmodel = "fake-model"\nparallel = 1\n'
        f'[slots.unused]\nurl = "{closed_port_url()}"\nmodel = "x"\n'
    )
    (tmp / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    return str(tmp)


async def health(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = await asyncio.to_thread(main, ["health", *argv])
    out = capsys.readouterr()
    try:
        return code, json.loads(out.out), out.err
    except ValueError:
        return code, out.out, out.err


async def test_all_healthy_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        code, data, err = await health(
            capsys, "--workspace", workspace(tmp_path, a.url, b.url), "--json"
        )
        probes = [r["body"] for r in a.requests + b.requests]
    assert code == 0, err
    assert data["ok"] is True
    rows = {r["slot"]: r for r in data["slots"]}
    assert set(rows) == {"naughty", "translator"}  # active slots only
    for row in rows.values():
        assert row["ok"] is True and row["error"] is None
        assert row["reachable"] and row["model_served"] and row["probe_ms"] > 0
    assert rows["naughty"]["health"] == {"endpoint": "/health", "ok": True, "status": 200}
    assert rows["translator"]["health"] is None  # runtime "openai" has no health endpoint
    assert rows["naughty"]["seats_cap"] == 2 and rows["naughty"]["seats_in_use"] == 0
    assert [p["max_tokens"] for p in probes] == [1, 1]


async def test_one_slot_down_exits_1_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAIServer() as a:
        ws = workspace(tmp_path, a.url, closed_port_url())
        code, data, _ = await health(capsys, "--workspace", ws, "--json")
        a.add_faults([{"kind": "cut", "after": 1}])  # the next probe never finishes
        code_cut, data_cut, _ = await health(capsys, "--workspace", ws, "--json")
        code_text, text, _ = await health(capsys, "--workspace", ws)
    assert code == 1 and data["ok"] is False
    rows = {r["slot"]: r for r in data["slots"]}
    assert rows["naughty"]["ok"] is True
    assert rows["translator"]["ok"] is False and rows["translator"]["reachable"] is False
    assert rows["translator"]["error"].startswith("unreachable:")
    assert code_cut == 1
    cut = {r["slot"]: r for r in data_cut["slots"]}["naughty"]
    assert cut["ok"] is False and "no finish_reason" in cut["error"]
    assert code_text == 1 and "DOWN" in text and "translator" in text and "unreachable" in text


async def test_seats_in_use_come_from_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAIServer() as a:
        ws = workspace(tmp_path, a.url, a.url)
        ledger = HostLedger()
        async with ledger:
            urls = (a.url,)
            seats = ledger.deployment(
                deployment_id(urls, "fake-model"), deployment_label(urls, "fake-model"), 2
            )
            lease = await seats.acquire("interactive")
            code, data, _ = await health(capsys, "--workspace", ws, "--json")
            await seats.release(lease)
    assert code == 0
    for row in data["slots"]:  # both slots name the same deployment
        assert (row["seats_in_use"], row["seats_cap"]) == (1, 2)
    assert data["ledger"]["kind"] == "host" and data["ledger"]["error"] is None


async def test_an_embedded_slot_not_running_is_reported_not_started(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: Path
) -> None:
    async with FakeOpenAIServer() as a:
        code, data, _ = await health(
            capsys, "--workspace", workspace(tmp_path, a.url, "embedded"), "--json"
        )
    assert code == 1
    row = {r["slot"]: r for r in data["slots"]}["translator"]
    assert row["url"] == "embedded" and row["ok"] is False and "not running" in row["error"]
    assert not (isolated_env / "local").exists()


async def test_fleet_health_events_reach_vector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAMILIAR_TELEMETRY", "on")
    async with FakeVector() as vector, FakeOpenAIServer() as a:
        monkeypatch.setenv("FAMILIAR_TELEMETRY_URL", vector.url)
        code, _, err = await health(
            capsys, "--workspace", workspace(tmp_path, a.url, closed_port_url()), "--json"
        )
        events = [e for e in vector.events if e["event"] == "fleet.health"]
    assert code == 1, err
    by_slot = {e["slot"]: e for e in events}
    assert set(by_slot) == {"naughty", "translator"}
    assert by_slot["naughty"]["up"] == 1 and by_slot["naughty"]["probe_ms"] > 0
    assert by_slot["translator"]["up"] == 0 and by_slot["translator"]["error"]
    assert by_slot["naughty"]["gen_ai.request.model"] == "fake-model"
    assert len({e["correlation_id"] for e in events}) == 1


async def test_watch_repeats_until_ctrl_c(tmp_path: Path) -> None:
    async with FakeOpenAIServer() as a:
        ws = workspace(tmp_path, a.url, a.url)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "familiar", "health", "--workspace", ws,
            "--watch", "0.2", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            rounds = [
                json.loads(await asyncio.wait_for(proc.stdout.readline(), 30)) for _ in range(2)
            ]
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        probes = len(a.requests)
    assert [r["ok"] for r in rounds] == [True, True]
    assert rounds[1]["checked_at"] > rounds[0]["checked_at"]
    assert probes >= 2  # two slots of one deployment: one probe a round, at least two rounds
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
