"""An honest bench (issue 27 item 2): the suggestion never exceeds the server's own
capacity, a warm-up per level, ``--repeat`` with its spread, ``--apply`` on a shared
deployment only with ``--yes``, ``--compare`` of different settings refused, ``--list``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from familiar.cli.main import main
from tests.support.fake_openai import FakeOpenAIServer


def workspace(tmp: Path, url: str, *, runtime: str = "llama.cpp", extra: str = "") -> str:
    (tmp / "slots.toml").write_text(
        f'[slots.naughty]\nurl = "{url}"\nmodel = "fake-model"\nruntime = "{runtime}"\n'
        f"parallel = 1\ntimeout_s = 20\n{extra}"
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


SMALL = ["--requests", "4", "--output-tokens", "4", "--input-tokens", "8"]


async def test_the_suggestion_is_capped_at_the_servers_own_slots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the server serves 4 at once (throughput keeps rising to 4) but says it has 2 slots
    async with FakeOpenAIServer(
        capacity=4, token_delay_s=0.05, fill_max_tokens=True, report_slots=2
    ) as srv:
        ws = workspace(tmp_path, srv.url)
        code, data, err = await bench(
            capsys, "naughty", "--workspace", ws, "--concurrency", "1,2,4", *SMALL, "--json"
        )
        assert code == 0, err
        code, text, err = await bench(
            capsys, "naughty", "--workspace", ws, "--concurrency", "1,2,4", *SMALL
        )
        assert code == 0, err
    assert data["server"]["server_parallel"] == 2
    assert data["suggested_parallel"] == 2
    assert data["knee"]["capped_at_server_parallel"] == 2
    assert "suggested parallel = 2 " in text
    assert "capped at 2: the server itself runs 2 requests at once" in text


async def test_no_cap_when_the_knee_is_within_the_servers_slots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAIServer(
        capacity=2, token_delay_s=0.05, fill_max_tokens=True, report_slots=4
    ) as srv:
        code, data, err = await bench(
            capsys, "naughty", "--workspace", workspace(tmp_path, srv.url),
            "--concurrency", "1,2,4", *SMALL, "--json",
        )  # fmt: skip
    assert code == 0, err
    assert data["suggested_parallel"] == 2
    assert data["knee"]["capped_at_server_parallel"] is None


async def test_warmup_and_repeat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with FakeOpenAIServer(capacity=2, token_delay_s=0.02, fill_max_tokens=True) as srv:
        ws = workspace(tmp_path, srv.url)
        code, data, err = await bench(
            capsys, "naughty", "--workspace", ws, "--concurrency", "1,2", *SMALL,
            "--repeat", "3", "--json",
        )  # fmt: skip
        assert code == 0, err
        sent = srv.stats["requests"]
        code, text, err2 = await bench(
            capsys, "naughty", "--workspace", ws, "--concurrency", "1,2", *SMALL, "--repeat", "2"
        )
        assert code == 0, err2
    # per level: one warm-up, then 3 runs of 4 measured requests
    assert sent == 2 * (1 + 3 * 4)
    for lv in data["levels"]:
        assert lv["ok"] == 12 and len(lv["runs_output_tok_per_s"]) == 3
        assert all(x > 0 for x in lv["runs_output_tok_per_s"])
    assert data["settings"]["repeat"] == 3 and data["settings"]["warmup"] is True
    assert "(run 3 of 3)" in err and "runs " in err
    assert "spread" in text.splitlines()[2]  # the header row has the spread column
    assert "±" in text


async def test_apply_on_a_shared_deployment_needs_yes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAIServer(capacity=2, token_delay_s=0.01, fill_max_tokens=True) as srv:
        other = f'\n[slots.kindergarten]\nurl = "{srv.url}"\nmodel = "fake-model"\nparallel = 3\n'
        ws = workspace(tmp_path, srv.url, extra=other)
        before = (tmp_path / "slots.toml").read_bytes()
        argv = ["naughty", "--workspace", ws, "--concurrency", "1,2", *SMALL, "--apply"]
        code, _, err = await bench(capsys, *argv)
        assert srv.stats["requests"] == 0  # refused before any request
        assert (tmp_path / "slots.toml").read_bytes() == before
        code2, text, err2 = await bench(capsys, *argv, "--yes")
    assert code == 2 and err.count("\n") == 1
    assert "shares its deployment with kindergarten" in err and "--yes" in err
    assert code2 == 0, err2
    assert "shares its deployment with kindergarten" in err2
    assert "written to" in text and (tmp_path / "slots.toml").read_bytes() != before


async def test_compare_refuses_different_settings_and_list_shows_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeOpenAIServer(capacity=2, token_delay_s=0.01, fill_max_tokens=True) as srv:
        ws = workspace(tmp_path, srv.url)
        code, empty, _ = await bench(capsys, "--list", "--workspace", ws)
        assert code == 0 and "no saved bench runs" in empty
        runs = []
        for out in ("4", "8"):
            code, data, err = await bench(
                capsys, "naughty", "--workspace", ws, "--concurrency", "1", "--requests", "2",
                "--output-tokens", out, "--input-tokens", "8", "--save", "--json",
            )  # fmt: skip
            assert code == 0, err
            runs.append(data["id"])
    code, _, err = await bench(capsys, "--compare", *runs, "--workspace", ws)
    assert code == 2 and "output_tokens 4 vs 8" in err and "--yes" in err
    code, text, err = await bench(capsys, "--compare", *runs, "--workspace", ws, "--yes")
    assert code == 0 and "x = B / A" in text
    assert "warning: comparing runs of different settings (output_tokens 4 vs 8)" in err
    (tmp_path / "home" / "bench" / "broken.json").write_text("{not json")
    code, listing, _ = await bench(capsys, "--list", "--workspace", ws)
    assert code == 0
    assert all(run in listing for run in runs) and "2 saved runs in" in listing
    assert "(1 unreadable file(s) skipped)" in listing
    (tmp_path / "home" / "bench" / "broken.json").unlink()
    code, rows, _ = await bench(capsys, "--list", "--workspace", ws, "--json")
    assert [r["id"] for r in rows] == sorted(runs)
    assert {r["output_tokens"] for r in rows} == {4, 8}


async def test_plot_marks_the_server_and_the_knee_or_hints_at_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    chart = tmp_path / "chart.png"
    async with FakeOpenAIServer(
        capacity=4, token_delay_s=0.03, fill_max_tokens=True, report_slots=2
    ) as srv:
        ws = workspace(tmp_path, srv.url)
        argv = ["naughty", "--workspace", ws, "--concurrency", "1,2,4", *SMALL, "--plot"]
        code, _, err = await bench(capsys, *argv, str(chart))
        assert code == 0, err
        sent = srv.stats["requests"]
        monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
        code2, _, err2 = await bench(capsys, *argv, str(tmp_path / "other.png"))
        assert srv.stats["requests"] == sent  # refused before any request
    assert f"chart written to {chart}" in err
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.size == (960, 540)
    assert code2 == 2 and err2.count("\n") == 1 and "pip install 'familiar[plot]'" in err2
    assert not (tmp_path / "other.png").exists()
