"""The spill file under damage, interruption and company; refusals; closing while cancelled.

Against the loopback receiver of :mod:`tests.support.fake_vector` and tmp dirs; a few
httpx transports wrap the real one to make a receiver hang or vanish at an exact request.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from familiar.cli.main import main
from familiar.errors import TelemetryUnavailable
from familiar.telemetry import Telemetry, make_event
from tests.support.fake_vector import FakeVector

REPO = Path(__file__).resolve().parents[2]


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode() + b"\n"


def _events(n: int, name: str = "chunk.finished") -> list[dict[str, Any]]:
    return [make_event(name, {"chunk": i, "text": "日本語の記事"}) for i in range(n)]


def _torn(name: str) -> bytes:
    """An event cut inside a UTF-8 character, as a crash while appending leaves it."""
    data = json.dumps(make_event(name, {"text": "日本語"}), ensure_ascii=False).encode()
    return data[: data.index("本".encode()) + 1]


def _ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"] for e in events]


def _warnings(logs: list[dict[str, Any]]) -> list[str]:
    return [str(entry["event"]) for entry in logs if entry["log_level"] == "warning"]


def _spill(home: Path, data: bytes) -> Path:
    path = home / "telemetry" / "spill.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _spill_events(home: Path, n: int) -> list[str]:
    """``n`` events spilled by familiar itself (a full buffer goes straight to disk)."""
    t = Telemetry(home, enabled=True, buffer_size=0)
    for i in range(n):
        t.emit("chunk.finished", {"chunk": i})
    return _ids([json.loads(x) for x in t.spill_path.read_bytes().splitlines()])


class _Gate(httpx.AsyncBaseTransport):
    """The real transport for the first ``passes`` requests; after that the receiver
    hangs (``hang=True``) or is gone (connection refused)."""

    def __init__(self, passes: int, *, hang: bool = True, delay_s: float = 0.0) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.passes, self.hang, self.delay_s = passes, hang, delay_s
        self.held = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.passes <= 0:
            self.held.set()
            if self.hang:
                await asyncio.Event().wait()
            raise httpx.ConnectError("receiver gone", request=request)
        self.passes -= 1
        await asyncio.sleep(self.delay_s)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- a damaged spill file -------------------------------------------------------------


def _damaged(home: Path) -> tuple[list[str], int]:
    """A spill file with every kind of bad line; returns the good ids and the bad count."""
    good = _events(5)
    bad = [
        b"42\n",
        b'"x"\n',
        b"[1]\n",
        b"null\n",
        _torn("torn") + b"\n",  # cut mid-character, then a later append
        b"\xff\xfe\x00 garbage {{\n",  # not UTF-8
        b'{"event": "half\n',  # not JSON
        b"[" * 100_000 + b"\n",  # too deep for the parser
    ]
    blank = [b"\n", b"   \n", b"\r\n"]  # skipped, not counted
    lines = [_line(good[0]), *bad[:4], _line(good[1]), *blank, bad[4], _line(good[2])]
    lines += [*bad[5:], _line(good[3]), _line(good[4]), _torn("tail")]  # torn tail
    _spill(home, b"".join(lines))
    return _ids(good), len(bad) + 1


async def test_bad_lines_are_skipped_and_counted_good_events_sent_once(tmp_path: Path) -> None:
    good, corrupt = _damaged(tmp_path)
    t = Telemetry(tmp_path, enabled=True, batch_size=2)
    assert t.spill_info() == {"backlog": 5, "corrupt": corrupt}
    assert t.backlog() == 5
    async with FakeVector() as vector:
        t = Telemetry(tmp_path, url=vector.url, enabled=True, batch_size=2)
        with capture_logs() as logs:
            assert await t.flush_spill() == 5
        assert _ids(vector.events) == good  # in order, each once
        assert t.counts["corrupt"] == corrupt and t.counts["replayed"] == 5
        assert _warnings(logs) == [f"telemetry spill file: skipped {corrupt} unreadable line(s)"]
        assert not t.spill_path.exists() and not (t.dir / "spill.offset").exists()
        assert t.spill_info() == {"backlog": 0, "corrupt": 0}
        assert t.load_stats()["corrupt"] == corrupt and t.load_stats()["replayed"] == 5
        again = Telemetry(tmp_path, url=vector.url, enabled=True)
        assert await again.flush_spill() == 0  # nothing twice
        assert _ids(vector.events) == good


async def test_next_run_replays_a_damaged_file_without_crashing(tmp_path: Path) -> None:
    good, corrupt = _damaged(tmp_path)
    async with FakeVector() as vector:
        async with Telemetry(tmp_path, url=vector.url, enabled=True, interval_s=0.05) as t:
            t.emit("batch.start")
            await vector.wait_for_events(6)
        assert _ids(vector.events)[:5] == good
        assert [e["event"] for e in vector.events[5:]] == ["batch.start"]
        assert t.counts["corrupt"] == corrupt and t.backlog() == 0


async def test_cli_status_and_flush_on_a_damaged_file(
    tmp_path: Path,
    isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good, _ = _damaged(isolated_env)
    ws = ["--workspace", str(tmp_path)]
    status = await asyncio.to_thread(main, ["telemetry", "status", *ws, "--json"])
    out = capsys.readouterr()
    assert status == 0, out.err
    info = json.loads(out.out)
    assert info["backlog"] == 5 and info["backlog_corrupt"] > 0
    async with FakeVector() as vector:
        monkeypatch.setenv("FAMILIAR_TELEMETRY_URL", vector.url)
        assert await asyncio.to_thread(main, ["telemetry", "flush", *ws, "--json"]) == 0
        assert _ids(vector.events) == good
        assert json.loads(capsys.readouterr().out) == {
            "url": vector.url,
            "replayed": 5,
            "backlog": 0,
        }
    assert "Traceback" not in capsys.readouterr().err


def test_status_never_raises(tmp_path: Path) -> None:
    t = Telemetry(tmp_path, enabled=True)
    assert t.spill_info() == {"backlog": 0, "corrupt": 0}  # no file
    t.spill_path.mkdir(parents=True)  # not even a file
    assert t.spill_info() == {"backlog": 0, "corrupt": 0} and t.backlog() == 0
    t.spill_path.rmdir()
    _spill(tmp_path, b"\xff" * 1000)  # no newline at all
    assert t.spill_info() == {"backlog": 0, "corrupt": 1}
    t.stats_path.write_text("[1, 2]")  # stats.json that is not an object
    assert t.load_stats() == {}


@pytest.mark.parametrize("offset", [b"garbage\n", b"999999999\n", b"-5\n"])
async def test_a_bad_offset_file_means_from_the_start(tmp_path: Path, offset: bytes) -> None:
    ids = _spill_events(tmp_path, 3)
    (tmp_path / "telemetry" / "spill.offset").write_bytes(offset)
    async with FakeVector() as vector:
        assert await Telemetry(tmp_path, url=vector.url, enabled=True).flush_spill() == 3
        assert _ids(vector.events) == ids


# -- appends: whole events, torn lines, other processes ---------------------------------


async def test_a_torn_last_line_does_not_swallow_the_next_spill(tmp_path: Path) -> None:
    first = make_event("before.crash")
    path = _spill(tmp_path, _line(first) + _torn("torn"))
    t = Telemetry(tmp_path, enabled=True, buffer_size=0)
    t.emit("after.crash", {"n": 1})
    t.emit("after.crash", {"n": 2})
    assert path.read_bytes().count(b"\n") == 4  # the torn line was ended first
    assert t.spill_info() == {"backlog": 3, "corrupt": 1}
    async with FakeVector() as vector:
        assert await Telemetry(tmp_path, url=vector.url, enabled=True).flush_spill() == 3
        events = vector.events
    assert [e["event"] for e in events] == ["before.crash", "after.crash", "after.crash"]
    assert events[0]["event_id"] == first["event_id"] and [e["n"] for e in events[1:]] == [1, 2]


def test_concurrent_spills_keep_every_line_whole(tmp_path: Path) -> None:
    def spill(n: int) -> None:
        t = Telemetry(tmp_path, enabled=True, buffer_size=0)
        for i in range(200):
            t.emit("chunk.finished", {"writer": n, "i": i, "pad": "x" * (i * 37 % 3000)})

    threads = [threading.Thread(target=spill, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lines = (tmp_path / "telemetry" / "spill.jsonl").read_bytes().splitlines()
    events = [json.loads(x) for x in lines]
    assert len(events) == 800
    for n in range(4):
        assert [e["i"] for e in events if e["writer"] == n] == list(range(200))


async def test_odd_values_spill_and_replay_without_crashing(tmp_path: Path) -> None:
    t = Telemetry(tmp_path, enabled=True, buffer_size=0)
    t.emit("article.failed", {"path": "bad-\udcff-name.md", "dir": Path("/srv/articles")})
    assert t.backlog() == 1
    async with FakeVector() as vector:
        assert await Telemetry(tmp_path, url=vector.url, enabled=True).flush_spill() == 1
        event = vector.events[0]
    assert event["path"] == "bad-?-name.md" and event["dir"] == "/srv/articles"


# -- replay interrupted, resumed; one replayer at a time ---------------------------------


@pytest.mark.parametrize("how", ["cancelled", "receiver gone"])
async def test_interrupted_replay_resumes_without_resending(tmp_path: Path, how: str) -> None:
    ids = _spill_events(tmp_path, 10)
    async with FakeVector() as vector:
        gate = _Gate(1, hang=how == "cancelled")
        t = Telemetry(tmp_path, url=vector.url, enabled=True, batch_size=3, transport=gate)
        if how == "cancelled":
            task = asyncio.create_task(t.flush_spill())
            await asyncio.wait_for(gate.held.wait(), 5)  # batch 1 delivered, batch 2 hangs
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            with pytest.raises(TelemetryUnavailable):
                await t.flush_spill()
        assert _ids(vector.events) == ids[:3]
        offset = int((t.dir / "spill.offset").read_text())
        assert offset == sum(len(x) + 1 for x in t.spill_path.read_bytes().splitlines()[:3])
        assert t.backlog() == 7
        later = _spill_events(tmp_path, 2)[-2:]  # appended while an offset exists: at the end
        assert t.backlog() == 9
        assert await Telemetry(tmp_path, url=vector.url, enabled=True).flush_spill() == 9
        received = _ids(vector.events)
    assert received == ids + later  # every event exactly once, in order
    assert not t.spill_path.exists() and not (t.dir / "spill.offset").exists()


_KILLED = """
import asyncio, sys
from pathlib import Path
import httpx
from familiar.telemetry import Telemetry

class Gate(httpx.AsyncBaseTransport):
    def __init__(self):
        self.inner, self.n = httpx.AsyncHTTPTransport(), 0
    async def handle_async_request(self, request):
        self.n += 1
        if self.n > 1:
            print("HANGING", flush=True)
            await asyncio.Event().wait()
        return await self.inner.handle_async_request(request)

t = Telemetry(Path(sys.argv[1]), url=sys.argv[2], enabled=True, batch_size=3, transport=Gate())
asyncio.run(t.flush_spill())
"""


async def test_replay_killed_mid_way_resumes_without_resending(tmp_path: Path) -> None:
    ids = _spill_events(tmp_path, 10)
    async with FakeVector() as vector:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _KILLED,
            str(tmp_path),
            vector.url,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                while (line := await proc.stdout.readline()) not in (b"HANGING\n", b""):
                    pass  # until batch 1 is delivered and batch 2 on its way
        finally:
            proc.kill()  # SIGKILL: no finally blocks, no cleanup
            _, err = await proc.communicate()
        assert line == b"HANGING\n", err.decode()
        assert _ids(vector.events) == ids[:3]
        assert await Telemetry(tmp_path, url=vector.url, enabled=True).flush_spill() == 7
        assert _ids(vector.events) == ids


@contextmanager
def _replay_lock_held(home: Path) -> Iterator[None]:
    """Another familiar process replaying the same spill file."""
    (home / "telemetry").mkdir(parents=True, exist_ok=True)
    fd = os.open(home / "telemetry" / "replay.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


async def test_one_replayer_at_a_time(tmp_path: Path) -> None:
    ids = _spill_events(tmp_path, 3)
    async with FakeVector() as vector:
        t = Telemetry(tmp_path, url=vector.url, enabled=True)
        with _replay_lock_held(tmp_path):
            assert await t.flush_spill() == 0  # the other one is at it: skip this time
            assert vector.events == [] and t.backlog() == 3
        assert await t.flush_spill() == 3
        assert _ids(vector.events) == ids


# -- a receiver that refuses ------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 403, 413])
async def test_refusals_make_one_warning_with_the_count(tmp_path: Path, status: int) -> None:
    async with FakeVector() as vector:
        vector.fail_next(status, 50)
        with capture_logs() as logs:
            async with Telemetry(tmp_path, url=vector.url, enabled=True, interval_s=0.05) as t:
                for n in range(3):
                    t.emit("chunk.finished", {"chunk": n})
        posts = len(vector.requests)
    # 3 events, each refused alone after splitting, then the one telemetry.dropped notice
    assert _warnings(logs) == [f"telemetry receiver refused 4 event(s) (HTTP {status}); dropped"]
    assert not [entry for entry in logs if entry["log_level"] == "error"]
    assert t.counts["refused"] == t.counts["dropped"] == 4
    assert t.counts["emitted"] == 4  # one notice for the flush, not one per event
    assert posts == 6 and t.backlog() == 0
    assert t.load_stats()["refused"] == 4


async def test_refusals_while_replaying_make_one_warning(tmp_path: Path) -> None:
    _spill_events(tmp_path, 5)
    async with FakeVector() as vector:
        vector.fail_next(400, 50)
        t = Telemetry(tmp_path, url=vector.url, enabled=True, batch_size=2)
        with capture_logs() as logs:
            assert await t.flush_spill() == 5  # handed over: refused ones are not retried
        assert vector.pending_failures < 50
    assert _warnings(logs) == ["telemetry receiver refused 6 event(s) (HTTP 400); dropped"]
    assert t.backlog() == 0 and t.counts["dropped"] == 6


async def test_some_refused_the_notice_arrives(tmp_path: Path) -> None:
    async with FakeVector(max_body_bytes=2000) as vector:
        with capture_logs() as logs:
            async with Telemetry(tmp_path, url=vector.url, enabled=True, interval_s=0.05) as t:
                for n in range(3):
                    t.emit("chunk.finished", {"chunk": n, "note": "x" * 3000})
                t.emit("chunk.finished", {"chunk": "small"})
        notices = [e for e in vector.events if e["event"] == "telemetry.dropped"]
    assert notices and [(e["dropped"], e["reason"]) for e in notices] == [(3, "HTTP 413")]
    assert _warnings(logs) == ["telemetry receiver refused 3 event(s) (HTTP 413); dropped"]


# -- secrets ------------------------------------------------------------------------------


async def test_nested_secrets_are_masked(tmp_path: Path) -> None:
    fields = {
        "argv": ["familiar", "--api-key", "sk-abcdefghijklmnop"],
        "headers": {"authorization": "Bearer qwertyuiopasdfgh"},
        "deep": [{"tries": [("Bearer zxcvbnmlkjhgf", 3)]}],
        "count": 7,
    }
    async with FakeVector() as vector:
        async with Telemetry(tmp_path, url=vector.url, enabled=True, interval_s=0.05) as t:
            t.emit("cli.start", fields)
        event = vector.events[0]
    blob = json.dumps(event)
    for secret in ("abcdefghijklmnop", "qwertyuiopasdfgh", "zxcvbnmlkjhgf"):
        assert secret not in blob
    assert event["argv"][:2] == ["familiar", "--api-key"] and event["count"] == 7
    assert event["deep"][0]["tries"][0][1] == 3
    assert fields["argv"][2] == "sk-abcdefghijklmnop"  # the caller's values are left alone


# -- closing while cancelled ----------------------------------------------------------------


async def _work(t: Telemetry, started: asyncio.Event) -> None:
    async with t:
        for n in range(5):
            t.emit("chunk.finished", {"chunk": n})
        started.set()
        await asyncio.Event().wait()  # Ctrl-C / SIGTERM cancels the work here


async def _cancel_during_close(t: Telemetry, times: int = 2) -> float:
    """Cancel the work, and again while it closes; returns the seconds it took to end."""
    started = asyncio.Event()
    task = asyncio.create_task(_work(t, started))
    await started.wait()
    begun = time.monotonic()
    task.cancel()
    for _ in range(times - 1):
        await asyncio.sleep(0.1)
        task.cancel()  # another Ctrl-C / SIGTERM while closing
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    return time.monotonic() - begun


@pytest.mark.parametrize("cancels", [1, 2, 5])
async def test_cancelled_work_still_flushes_within_the_deadline(
    tmp_path: Path, cancels: int
) -> None:
    async with FakeVector() as vector:
        slow = _Gate(100, delay_s=0.3)  # a receiver slow enough to be caught mid-flush
        t = Telemetry(tmp_path, url=vector.url, enabled=True, interval_s=60, transport=slow)
        assert await _cancel_during_close(t, cancels) < 3
        assert [e["chunk"] for e in vector.events] == [0, 1, 2, 3, 4]
    assert t.counts["sent"] == 5 and t.backlog() == 0


async def test_cancelled_work_spills_when_the_receiver_is_down(tmp_path: Path) -> None:
    async with FakeVector() as vector:
        await vector.stop()
        t = Telemetry(tmp_path, url=vector.url, enabled=True, interval_s=60)
        await _cancel_during_close(t)
    spilled = [json.loads(x) for x in t.spill_path.read_bytes().splitlines()]
    assert [e["chunk"] for e in spilled] == [0, 1, 2, 3, 4]


async def test_a_hanging_receiver_cannot_hold_the_close(tmp_path: Path) -> None:
    hanging = _Gate(0)
    url = "http://127.0.0.1:9/telemetry"
    t = Telemetry(
        tmp_path, url=url, enabled=True, interval_s=60, close_deadline_s=0.3, transport=hanging
    )
    took = await _cancel_during_close(t)
    assert took < 2.5
    spilled = [json.loads(x) for x in t.spill_path.read_bytes().splitlines()]
    assert [e["chunk"] for e in spilled] == [0, 1, 2, 3, 4]  # the in-flight batch too
