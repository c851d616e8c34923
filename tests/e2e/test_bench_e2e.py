"""familiar health and familiar bench on the real embedded llama-server (Gemma 3 270M).

Kept short for 2 CPU cores: prompts of 8 tokens, answers of 4 (``ignore_eos``: exactly
4), at concurrency 1, 2, 4, 8 two requests per level or one per seat (16 in all). The
server gets one thread: the bench's own client needs the other core (llama.cpp's thread
barriers collapse when a busy process shares its cores). It checks the JSON shapes, that every
level was measured from finished streams, and that llama-server's own capacity
(``/props`` ``total_slots``) is read. The figures themselves are not judged: the model is
tiny and the host is shared.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from familiar.cli.main import main
from familiar.local import LocalServer

pytestmark = pytest.mark.e2e

SLOT = 'url = "embedded"\nmodel = "gemma-3-270m"\nruntime = "llama.cpp"\nparallel = 4\n'


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    code = main(list(argv))
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


def test_health_and_bench_on_the_embedded_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_env: Path
) -> None:
    (tmp_path / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    (tmp_path / "slots.toml").write_text(f"[slots.naughty]\n{SLOT}[slots.translator]\n{SLOT}")
    ws = str(tmp_path)

    code, data, _ = _run(capsys, "health", "--workspace", ws, "--json")
    assert code == 1  # not running: reported, never started by health
    assert all(not r["ok"] and "not running" in r["error"] for r in data["slots"])

    server = LocalServer(isolated_env, threads=1)
    info = asyncio.run(server.ensure_running())
    try:
        code, data, err = _run(capsys, "health", "--workspace", ws, "--json")
        assert code == 0, err
        for row in data["slots"]:
            assert row["ok"] and row["url"] == info.base_url
            assert row["health"] == {"endpoint": "/health", "ok": True, "status": 200}
            assert row["server_parallel"] == info.seats == row["parallel"]
            assert row["probe_ms"] > 0 and row["version"] and row["warnings"] == []
            assert row["waiting"] == 0 and 0 <= row["running"] <= 2  # the probes themselves

        png = tmp_path / "bench.png"
        code, run, err = _run(
            capsys, "bench", "translator", "--workspace", ws, "--concurrency", "1,2,4,8",
            "--requests", "2", "--input-tokens", "8", "--output-tokens", "4",
            "--json", "--save", "--plot", str(png),
        )  # fmt: skip
        assert code == 0, err
        assert "holding all 4 seats" in err
        assert server.status() == info  # the bench used the running server, left it running
    finally:
        asyncio.run(server.stop())
    assert run["slot"] == "translator" and run["runtime"] == "llama.cpp"
    assert run["server"]["server_parallel"] == 4 and run["server"]["version"]
    assert [lv["concurrency"] for lv in run["levels"]] == [1, 2, 4, 8]
    for lv in run["levels"]:
        n = max(2, lv["concurrency"])
        assert (lv["ok"], lv["failed"]) == (n, 0), (lv["errors"], err)
        assert lv["output_tokens"] == n * 4  # ignore_eos: every answer exactly 4 tokens
        assert lv["output_tok_per_s"] > 0 and lv["req_per_s"] > 0
        assert lv["input_tokens_mean"] >= 8  # the chat template adds a few
        for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            assert all(lv[key][k] is not None and lv[key][k] >= 0 for k in ("mean", "p50", "p99"))
        assert lv["e2e_ms"]["mean"] >= lv["ttft_ms"]["mean"]
    assert run["suggested_parallel"] in (1, 2, 4, 8)
    assert Path(run["saved"]).is_file()
    assert png.read_bytes()[:4] == b"\x89PNG"
