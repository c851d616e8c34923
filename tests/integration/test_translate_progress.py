"""Progress everywhere (issue 27 item 4): ``translate`` without a terminal prints one line
per finished article, a line per 50 chunks of a long article, and a heartbeat with counts
and rates; -q silences it; ``--json`` stdout stays one JSON document."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import articles, report_rows

REPO = Path(__file__).resolve().parents[2]


async def run(ws: Path, *args: str, heartbeat: str = "0.3") -> tuple[int, str, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAMILIAR_")},
        "PYTHONPATH": str(REPO),
        "FAMILIAR_HOME": str(ws / "home"),
        "FAMILIAR_LEDGER_DIR": str(ws / "ledger"),
        "FAMILIAR_TELEMETRY": "off",
        "FAMILIAR_HEARTBEAT_S": heartbeat,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "familiar", "translate", "--workspace", str(ws), "--to", "en",
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_plain_progress_lines_and_heartbeats(
    tmp_path: Path, translator: FakeOpenAIServer
) -> None:
    translator.configure(latency_s=0.4)
    src = articles(tmp_path, 6)
    code, out, err = await run(tmp_path, str(src), "--out", str(tmp_path / "o"), "--json")
    assert code == 0, err
    rows = report_rows(out)
    lines = err.splitlines()
    done = [ln for ln in lines if re.match(r"familiar: translate: \[\d/6\] ok ", ln)]
    assert len(done) == 6, err
    assert {ln.split(" ok ", 1)[1].split(" (")[0] for ln in done} == {r["path"] for r in rows}
    assert all(re.search(r"\(\d+ chunks, \d+\.\d s\)$", ln) for ln in done), done
    beats = [ln for ln in lines if "articles " in ln and " done, chunks " in ln]
    assert len(beats) >= 2, err  # the run takes over a second; a beat every 0.3 s
    assert all(re.search(r"chunks/s, [\d.]+ tok/s, \d+s elapsed\)$", b) for b in beats), beats
    assert all(ln.startswith("familiar: ") for ln in lines), err


async def test_a_long_article_reports_every_50_chunks_and_q_silences(
    tmp_path: Path, translator: FakeOpenAIServer
) -> None:
    (tmp_path / "long.md").write_text(
        "\n\n".join(f"段落 {i}: 今日はいい天気です。" for i in range(260)) + "\n"
    )
    args = (str(tmp_path / "long.md"), "--out", str(tmp_path / "o"), "--chunk-tokens", "32")
    code, _, err = await run(tmp_path, *args, heartbeat="60")
    assert code == 0, err
    chunk_lines = [ln for ln in err.splitlines() if re.search(r"chunks \d+/\d+ done", ln)]
    assert len(chunk_lines) >= 2, err
    assert chunk_lines[0].startswith("familiar: translate: chunks 50/")
    code, out, err = await run(tmp_path, *args, "--force", "-q")
    assert code == 0 and err == "", err
    assert out.count("\n") == 1 and out.split("\t")[1] == "ok"


async def test_a_bad_heartbeat_is_exit_2(tmp_path: Path, translator: FakeOpenAIServer) -> None:
    src = articles(tmp_path, 1)
    code, _, err = await run(tmp_path, str(src), heartbeat="soon")
    assert (
        code == 2 and err.strip() == "familiar: error: FAMILIAR_HEARTBEAT_S: 'soon' is not a number"
    )
    assert translator.stats["requests"] == 0
