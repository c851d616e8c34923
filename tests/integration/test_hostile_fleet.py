"""Trust across processes through the whole command (issue 19): every secret form masked,
`familiar fleet` showing every holder and the strictest live cap, a squatted ledger
directory passed over, and `familiar health` taking seats like any request."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
import time
from pathlib import Path

from tests.support.fake_openai import FakeOpenAIServer
from tests.support.hostile import NOBODY, REPO, batch, cli, sources, workspace

# -- issue 19.6: every secret form masked -------------------------------------------------


async def test_url_credentials_never_show_even_in_their_basic_auth_form(tmp_path: Path) -> None:
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        url = srv.url.replace("http://", "http://alice:hunter2secret@")
        ws = workspace(tmp_path / "ws", url, parallel=1)
        sources(ws, 1)
        srv.add_faults([{"kind": "echo_key", "status": 401}] * 10)
        code, out, err, _ = await batch(ws)
        sent = [r["headers"].get("authorization", "") for r in srv.requests]
    assert code == 1
    basic = base64.b64encode(b"alice:hunter2secret").decode()
    assert any(basic in h for h in sent)  # the server really got Basic credentials
    written = [
        p.read_bytes().decode("utf-8", "replace")
        for p in ws.rglob("*")
        if p.is_file() and p.name != "slots.toml"  # the test's own file holds the URL
    ]
    for text in [out, err, *written]:
        assert "hunter2secret" not in text and basic not in text and basic.rstrip("=") not in text
    assert "401" in out


async def test_a_token_in_a_url_never_reaches_holder_records_or_fleet(tmp_path: Path) -> None:
    token = "s3cr3tT0kenValue"
    async with FakeOpenAIServer(latency_s=30, reply_mode="identity") as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=1)
        sources(ws, 1)
        env = {"FAMILIAR_HOME": str(ws / ".home")}
        # a path on the command line that names a token URL (its row says no such file)
        args = ("translate", "src", f"nats://{token}@10.0.0.1:4222", "--to", "en", "--out", "o")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "familiar",
            *args,
            cwd=ws,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while srv.stats["in_flight"] < 1:
                assert time.monotonic() < deadline and proc.returncode is None
                await asyncio.sleep(0.05)
            _, text, err1, _ = await cli("fleet", cwd=ws, env=env)
            _, js, err2, _ = await cli("fleet", "--json", cwd=ws, env=env)
            records = b"".join(p.read_bytes() for p in (tmp_path / "ledger").rglob("holders"))
        finally:
            proc.kill()
            await proc.wait()
    assert f"pid {proc.pid}" in text and "nats://10.0.0.1:4222" in text
    for shown in (text, js, err1, err2, records.decode("utf-8", "replace")):
        assert token not in shown


# -- issue 19.8: `familiar fleet` shows the truth -----------------------------------------

HOLD = """
import asyncio, sys
from familiar.ledger import HostLedger
async def main():
    cap, keep, take = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    async with HostLedger() as ledger:
        dep = ledger.deployment("d" * 20, "m @ http://gpu:8000", cap)
        leases = [await dep.acquire("interactive") for _ in range(take)]
        for lease in leases:
            if lease.seat != keep:
                await dep.release(lease)
        print([l.seat for l in leases if l.seat == keep], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


async def test_fleet_shows_every_holder_and_the_strictest_live_cap(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = []
    # seats are taken from the top; each process keeps one: 3, then 1, then 0. The kernel
    # lists locks by owner in the order the owners came, so F_OFD_GETLK over all the seats
    # answers seat 3 first (the old scan went on from 4 and saw one holder of three)
    for cap, keep, take in ((5, 3, 4), (5, 1, 4), (4, 0, 2)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            HOLD,
            str(cap),
            str(keep),
            str(take),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == f"[{keep}]".encode()
        procs.append(proc)
    try:
        ws = workspace(tmp_path / "ws", "http://127.0.0.1:9")
        code, out, err, _ = await cli("fleet", "--json", cwd=ws)
        code2, text, _, _ = await cli("fleet", cwd=ws)
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            await proc.wait()
    assert code == code2 == 0, err
    (dep,) = json.loads(out)["deployments"]
    assert {h["seat"]: h["pid"] for h in dep["holders"]} == {
        3: procs[0].pid,
        1: procs[1].pid,
        0: procs[2].pid,
    }
    assert dep["in_use"] == 3 and dep["cap"] == 4 and dep["caps_disagree"] is True
    assert dep["live_caps"] == [4, 5, 5]
    assert "in use 3/4" in text
    assert "live processes disagree on parallel (4, 5, 5): the strictest, 4, applies" in text


async def test_a_squatted_default_ledger_directory_is_passed_over(tmp_path: Path) -> None:
    squat_tmp = tmp_path / "tmp"
    squat = squat_tmp / f"familiar-{os.getuid()}"
    squat.mkdir(parents=True)
    if os.getuid() == 0:
        os.chown(squat, NOBODY, NOBODY)  # another user's directory
    else:
        squat.rmdir()
        squat.symlink_to(tmp_path)  # another user's symlink
    ws = workspace(tmp_path / "ws", "http://127.0.0.1:9")
    home = tmp_path / "user-home"
    home.mkdir()
    base = {"TMPDIR": str(squat_tmp), "HOME": str(home)}
    drop = ["FAMILIAR_LEDGER_DIR", "XDG_RUNTIME_DIR", "XDG_STATE_HOME"]
    code, out, err, _ = await cli("fleet", "--json", cwd=ws, env=base, drop=drop)
    assert code == 0, err
    assert json.loads(out)["ledger"]["where"] == str(
        home / f".local/state/familiar/ledger-{socket.gethostname()}"
    )
    # no usable home either: the next name in the temporary directory, never a dead end
    (tmp_path / "not-a-dir").write_text("")
    base["HOME"] = str(tmp_path / "not-a-dir")
    async with FakeOpenAIServer(reply_mode="identity") as srv:
        ws2 = workspace(tmp_path / "ws2", srv.url)
        sources(ws2, 1)
        code, out, err, _ = await cli(
            "translate", "src", "--to", "en", "--out", "out", cwd=ws2, env=base, drop=drop
        )
        assert code == 0, err
        code, out, err, _ = await cli("fleet", "--json", cwd=ws2, env=base, drop=drop)
    assert code == 0, err
    assert json.loads(out)["ledger"]["where"] == f"{squat}-2"


# -- issue 19.5: `familiar health` takes seats --------------------------------------------


async def test_health_during_a_batch_holding_every_seat_never_exceeds_the_cap(
    tmp_path: Path,
) -> None:
    async with FakeOpenAIServer(latency_s=0.5, reply_mode="identity", model="general-llm") as srv:
        ws = workspace(tmp_path / "ws", srv.url, parallel=2)
        sources(ws, 6)
        env = {"FAMILIAR_HOME": str(ws / ".home")}
        job = asyncio.create_task(
            cli("translate", "src", "--to", "en", "--out", "out", cwd=ws, env=env)
        )
        deadline = time.monotonic() + 30
        while srv.stats["in_flight"] < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        code, out, err, _ = await cli("health", "--json", "--timeout", "20", cwd=ws, env=env)
        bcode, _, berr, _ = await job
        probes = [
            r
            for r in srv.requests
            if r["body"].get("messages", [{}])[-1].get("content") == ("Reply with OK.")
        ]
    assert bcode == 0, berr
    assert code == 0, out + err
    assert srv.stats["max_in_flight"] == 2  # the batch's 2; the probe waited its turn
    assert len(probes) == 1  # two slot names, one deployment: one probe
    report = json.loads(out)
    assert [r["slot"] for r in report["slots"]] == ["naughty", "translator"] or [
        r["slot"] for r in report["slots"]
    ] == ["translator", "naughty"]
    assert all(r["ok"] for r in report["slots"])
