"""Integrity building blocks: URLs, deployments, file modes, secrets, records, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from familiar.config.slots import Slot, parse_slots
from familiar.errors import SlotsFileError, StateError
from familiar.fleet import parallel_conflicts
from familiar.logs import mask, mask_any, redact_url, register_secret
from familiar.store import read_record, write_bytes_atomic, write_json_atomic

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://127.0.0.1:99999/v1", "Port out of range"),
        ("http://:8000/v1", "no host"),
        ("http://[::1/v1", "Invalid IPv6"),
        ("ftp://x/v1", "must be http"),
    ],
)
def test_bad_urls_are_config_errors(url: str, needle: str) -> None:
    with pytest.raises(Exception, match=needle):
        parse_slots({"slots": {"a": {"url": url, "model": "m"}}}, "slots.toml")


def test_url_credentials_never_shown() -> None:
    slot = Slot(name="a", url="http://alice:s3cret-pw@gpu1:8000/v1", model="m")
    assert slot.public()["url"] == ["http://gpu1:8000/v1"]
    assert "s3cret" not in json.dumps(slot.public())
    with pytest.raises(SlotsFileError) as info:
        parse_slots(
            {"slots": {"a": {"url": "http://al:s3cret-pw@gpu1:99999/v1", "model": "m"}}}, "f"
        )
    assert "s3cret" not in str(info.value) and "gpu1:99999" in str(info.value)


def test_redact_and_mask() -> None:
    assert redact_url("https://u:p@h:1/v1") == "https://h:1/v1"
    assert redact_url("http://h/v1") == "http://h/v1"
    register_secret("plain-key-without-prefix-1234")
    text = "Incorrect API key provided: plain-key-without-prefix-1234. see http://u:pw@h/x"
    masked = mask(text)
    assert "plain-key-without-prefix-1234" not in masked and "u:pw" not in masked
    assert mask_any({"a": [text], "b": (1, text)}) == {"a": [masked], "b": [1, masked]}
    assert mask("clone ssh://git@github.com/x.git") == "clone ssh://git@github.com/x.git"
    register_secret("ab")  # too short to mask safely: ignored
    assert mask("about abc") == "about abc"


def test_deployment_is_urls_plus_model() -> None:
    slots = parse_slots(
        {
            "slots": {
                "naughty": {"url": "http://gw/v1", "model": "big", "parallel": 3},
                "kindergarten": {"url": "http://gw/v1", "model": "fast", "parallel": 5},
                "grandpa": {"url": "http://gw/v1", "model": "big", "parallel": 2},
            }
        },
        "slots.toml",
    )
    assert slots["naughty"].deployment != slots["kindergarten"].deployment
    assert slots["naughty"].deployment == slots["grandpa"].deployment
    (warning,) = parallel_conflicts(slots)
    assert "naughty (parallel 3)" in warning and "grandpa (parallel 2)" in warning
    assert "strictest, 2" in warning


def test_new_files_get_the_umask_mode_and_rewrites_keep_theirs(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "new.md", b"x")
        assert stat.S_IMODE((tmp_path / "new.md").stat().st_mode) == 0o644
        os.umask(0o027)
        write_bytes_atomic(tmp_path / "new2.md", b"x")
        assert stat.S_IMODE((tmp_path / "new2.md").stat().st_mode) == 0o640
        mine = tmp_path / "mine.md"
        mine.write_bytes(b"old")
        mine.chmod(0o664)
        write_bytes_atomic(mine, b"new")
        assert stat.S_IMODE(mine.stat().st_mode) == 0o664 and mine.read_bytes() == b"new"
    finally:
        os.umask(old)


def test_records_mask_secrets_and_corrupt_records_are_state_errors(tmp_path: Path) -> None:
    register_secret("zz-record-secret-99")
    write_json_atomic(tmp_path / "r.json", {"error": "HTTP 401: key zz-record-secret-99"})
    assert "zz-record-secret-99" not in (tmp_path / "r.json").read_text()
    assert read_record(tmp_path / "r.json")["error"] == "HTTP 401: key ***"
    for name, data in (("a", b'{"cut'), ("b", b"[1, 2]"), ("c", b"\xff\xfe{}")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(StateError, match="corrupt"):
            read_record(tmp_path / name, "plan")
    with pytest.raises(StateError, match="missing"):
        read_record(tmp_path / "nope.json")


def test_sigterm_cancels_the_work_and_exits_143(tmp_path: Path) -> None:
    marker = tmp_path / "unwound"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from familiar.cli import signals
        async def work():
            try:
                print("ready", flush=True)
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                open({str(marker)!r}, "w").write("cancelled")
                raise
        try:
            signals.run(work())
        except signals.Terminated:
            sys.exit(143)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 143
    assert marker.read_text() == "cancelled"
