"""The embedded server for a shared host (issue 27 item 1): one thread on 2 or fewer
CPUs, a bounded prompt cache, one server per user found from any workspace, and a
``local status`` with threads, memory, seats and uptime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from familiar import local
from familiar.cli.main import main
from familiar.local import LocalServer, default_threads, local_dir
from tests.unit.test_local import FAKE_SERVER, _gguf, _gone, _script


def test_default_threads_leave_a_small_host_room() -> None:
    assert [default_threads(n) for n in (1, 2, 3, 8)] == [1, 1, 3, 8]


def test_state_is_per_user_unless_familiar_home_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert local_dir(tmp_path / "h") == tmp_path / "h" / "local"  # FAMILIAR_HOME is set
    monkeypatch.delenv("FAMILIAR_HOME")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    want = tmp_path / "xdg" / "familiar" / "local"
    assert local_dir(tmp_path / "a" / ".familiar") == local_dir(tmp_path / "b") == want
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert local_dir(tmp_path) == tmp_path / "user" / ".local" / "state" / "familiar" / "local"


def test_bad_cache_ram(tmp_path: Path) -> None:
    with pytest.raises(local.LocalSetupError):
        LocalServer(tmp_path, cache_ram_mib=-1)


def test_one_server_from_any_workspace_with_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = _script(tmp_path, FAKE_SERVER)
    model = _gguf(tmp_path / "model.gguf")
    monkeypatch.setattr(local, "find_server_binary", lambda: binary)
    monkeypatch.setattr(local, "find_model", lambda: model)
    monkeypatch.setenv("FAKE_LOADING_S", "0.1")
    monkeypatch.delenv("FAMILIAR_HOME")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    a, b = tmp_path / "a", tmp_path / "b"
    for ws in (a, b):
        ws.mkdir()
        (ws / "CLAUDE.md").write_text("familiar: naughty\n")
    assert main(["local", "up", "--workspace", str(a), "--cache-ram", "64", "--threads", "1"]) == 0
    try:
        capsys.readouterr()
        assert main(["local", "status", "--workspace", str(b), "--json"]) == 0
        facts = json.loads(capsys.readouterr().out)
        assert facts["running"] and facts["threads"] == 1 and facts["cache_ram_mib"] == 64
        assert facts["seats"] == 4 and facts["rss_bytes"] > 1 << 20
        assert 0 <= facts["uptime_s"] < 60
        assert facts["state_dir"] == str(tmp_path / "xdg" / "familiar" / "local")
        cmd = local._cmdline(facts["pid"])
        at = cmd.index(b"--cache-ram")
        assert cmd[at + 1] == b"64" and cmd[cmd.index(b"--threads") + 1] == b"1"
        # `up` from the other workspace reuses it: never a second server by accident
        assert main(["local", "up", "--workspace", str(b)]) == 0
        assert f"pid {facts['pid']}" in capsys.readouterr().out
        assert main(["local", "status", "--workspace", str(b)]) == 0
        line = capsys.readouterr().out
        assert "threads 1" in line and "memory " in line and "MiB" in line
        assert "(prompt cache cap 64 MiB)" in line and " up 0m" in line
        assert not (a / ".familiar" / "local").exists()
    finally:
        assert main(["local", "down", "--workspace", str(b)]) == 0
    assert _gone(facts["pid"])
