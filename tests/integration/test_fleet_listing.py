"""``familiar fleet`` through the command: live deployments first, records of finished
processes hidden unless ``--all`` (the host ledger, real processes)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from familiar.ledger import HostLedger, deployment_id, deployment_label

DEAD = """
import asyncio, sys
from familiar.ledger import HostLedger, deployment_id, deployment_label

async def main() -> None:
    async with HostLedger() as ledger:
        for url in sys.argv[1:]:
            seats = ledger.deployment(deployment_id((url,), "m"), deployment_label((url,), "m"), 2)
            await seats.acquire("batch")  # held until the process exits

asyncio.run(main())
"""


async def familiar(cwd: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "familiar",
        *args,
        cwd=cwd,
        env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def finished_process(*urls: str) -> None:
    """A process that takes a seat of each deployment and exits (its records stay)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", DEAD, *urls)
    assert await asyncio.wait_for(proc.wait(), 60) == 0


async def test_fleet_shows_live_deployments_first_and_hides_dead_ones(tmp_path: Path) -> None:
    (tmp_path / "CLAUDE.md").write_text("familiar: naughty\n")
    dead = [f"http://127.0.0.1:{9000 + i}/v1" for i in range(3)]
    await finished_process(*dead)
    live_url = "http://127.0.0.1:9100/v1"
    async with HostLedger() as ledger:
        seats = ledger.deployment(
            deployment_id((live_url,), "m"), deployment_label((live_url,), "m"), 2
        )
        lease = await seats.acquire("interactive")
        code, out, err = await familiar(tmp_path, "fleet")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[1].startswith(deployment_label((live_url,), "m")), out
        assert "in use 1/2" in lines[1]
        assert f"seat {lease.seat}: " in out and f"pid {os.getpid()}" in out
        for url in dead:
            assert deployment_label((url,), "m") not in out, out
        assert lines[-1] == "3 deployment(s) with no live process hidden (--all shows them)"

        code, out, err = await familiar(tmp_path, "fleet", "--all")
        assert code == 0, err
        labels = [line.split("  [")[0] for line in out.splitlines() if "  [slots:" in line]
        assert labels[0] == deployment_label((live_url,), "m"), out
        assert sorted(labels[1:]) == sorted(deployment_label((u,), "m") for u in dead)
        assert "in use 0/2" in out and "hidden" not in out

        code, out, err = await familiar(tmp_path, "fleet", "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["hidden"] == 3
        assert [d["label"] for d in doc["deployments"]] == [deployment_label((live_url,), "m")]
        assert doc["deployments"][0]["live"] is True

        code, out, err = await familiar(tmp_path, "fleet", "--json", "--all")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["hidden"] == 0 and len(doc["deployments"]) == 4
        assert [d["live"] for d in doc["deployments"]] == [True, False, False, False]
        await seats.release(lease)


async def test_fleet_with_only_dead_records_says_how_to_see_them(tmp_path: Path) -> None:
    (tmp_path / "CLAUDE.md").write_text("familiar: naughty\n")
    await finished_process("http://127.0.0.1:9200/v1")
    code, out, err = await familiar(tmp_path, "fleet")
    assert code == 0, err
    assert "no live deployment; 1 with no live process hidden (--all shows them)" in out
    code, out, err = await familiar(tmp_path, "fleet", "--all")
    assert code == 0, err
    assert deployment_label(("http://127.0.0.1:9200/v1",), "m") in out
