"""Pure parts of trust across hosts: the fleet key, URLs without userinfo, the NATS
credentials from the environment, and the guard that cancels a request on a lost seat."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from familiar.errors import ConfigError, SeatLost
from familiar.ledger.lost import SeatGuard
from familiar.ledger.nats_connect import NatsAuth, public_url, strip_userinfo
from familiar.ledger.nats_trust import FleetKey
from familiar.queue.jobs import message_id

KEY = b"0123456789abcdef-key"


def test_a_sealed_record_checks_and_a_changed_or_moved_one_does_not() -> None:
    key = FleetKey(KEY)
    sealed = key.seal("result", "job1", b'{"b": 2, "a": "x"}')
    assert key.check("result", "job1", sealed) == sealed
    assert key.check("result", "job2", sealed) is None  # copied under another key
    assert key.check("chunk", "job1", sealed) is None  # another kind
    assert key.check("result", "job1", sealed.replace(b'"x"', b'"y"')) is None
    assert key.check("result", "job1", b'{"a": "x", "b": 2}') is None  # no mac
    assert key.check("result", "job1", b"not json") is None
    assert FleetKey(b"another-key-0123456").check("result", "job1", sealed) is None
    assert key.rejected["result"] == 4 and key.rejected["chunk"] == 1


def test_without_a_key_nothing_is_signed_or_checked() -> None:
    key = FleetKey()
    assert not key.enabled
    assert key.seal("seat", "k", b'{"a":1}') == b'{"a":1}'
    assert key.check("seat", "k", b"anything") == b"anything"


def test_the_fleet_key_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAMILIAR_FLEET_KEY", "k" * 20)
    assert FleetKey.from_env().enabled
    monkeypatch.setenv("FAMILIAR_FLEET_KEY", "short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        FleetKey.from_env()
    monkeypatch.setenv("FAMILIAR_FLEET_KEY", " " + "k" * 20)
    with pytest.raises(ConfigError, match="spaces"):
        FleetKey.from_env()
    monkeypatch.delenv("FAMILIAR_FLEET_KEY")
    path = tmp_path / "fleet.key"
    path.write_text("f" * 32 + "\n")
    monkeypatch.setenv("FAMILIAR_FLEET_KEY_FILE", str(path))
    file_key = FleetKey.from_env()
    assert file_key.check("x", "y", FleetKey(b"f" * 32).seal("x", "y", b"{}")) is not None
    monkeypatch.setenv("FAMILIAR_FLEET_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot be read"):
        FleetKey.from_env()
    monkeypatch.setenv("FAMILIAR_FLEET_KEY", "k" * 20)
    with pytest.raises(ConfigError, match="not both"):
        FleetKey.from_env()


def test_urls_lose_their_userinfo_wherever_familiar_shows_them() -> None:
    assert public_url("nats://s3cr3t-token@10.0.0.5:4222") == "nats://10.0.0.5:4222"
    assert public_url("nats://u:pw@a:1, tls://t@b:2") == "nats://a:1, tls://b:2"
    assert strip_userinfo("familiar worker --nats nats://tok@h:4222 -v") == (
        "familiar worker --nats nats://h:4222 -v"
    )


def test_nats_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("CREDS", "NKEY", "CA", "CERT", "CERT_KEY"):
        monkeypatch.delenv(f"FAMILIAR_NATS_{name}", raising=False)
    assert NatsAuth.from_env().options(["nats://127.0.0.1:4222"]) == {}
    assert "tls" in NatsAuth.from_env().options(["tls://127.0.0.1:4222"])
    monkeypatch.setenv("FAMILIAR_NATS_CA", str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match=r"FAMILIAR_NATS_CA: .* is not a readable file"):
        NatsAuth.from_env()
    monkeypatch.delenv("FAMILIAR_NATS_CA")
    creds = tmp_path / "u.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    monkeypatch.setenv("FAMILIAR_NATS_CREDS", str(creds))
    try:
        import nkeys  # noqa: F401
    except ImportError:  # nats-py signs with nkeys: without it, one clear line
        with pytest.raises(ConfigError, match="needs the Python package nkeys"):
            NatsAuth.from_env()
    else:
        assert NatsAuth.from_env().options([])["user_credentials"] == str(creds)
    monkeypatch.setenv("FAMILIAR_NATS_NKEY", str(creds))
    with pytest.raises(ConfigError, match="not both"):
        NatsAuth.from_env()


def test_a_republish_gets_a_fresh_message_id() -> None:
    assert message_id("abc") == "abc"
    again = {message_id("abc", True) for _ in range(3)}
    assert len(again) == 3 and all(m.startswith("abc.") for m in again)


async def test_a_lost_seat_cancels_the_guarded_block_as_seat_lost() -> None:
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    started = asyncio.Event()

    async def request() -> None:
        async with SeatGuard(lost):
            started.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(request())
    await started.wait()
    lost.set_result(None)
    with pytest.raises(SeatLost):
        await task
    with pytest.raises(SeatLost):  # lost before the request started
        async with SeatGuard(lost):
            pass


async def test_another_cancellation_passes_through_the_guard() -> None:
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    started = asyncio.Event()

    async def request() -> None:
        async with SeatGuard(lost):
            started.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(request())
    await started.wait()
    task.cancel()
    lost.set_result(None)  # both at once: the outside cancel wins
    with pytest.raises(asyncio.CancelledError):
        await task
    async with SeatGuard(None):  # a ledger that cannot lose seats: no guard at all
        await asyncio.sleep(0)


def test_an_off_host_server_without_credentials_gets_one_warning() -> None:
    from structlog.testing import capture_logs

    from familiar.ledger import nats_connect

    nats_connect._warned_open.clear()
    auth = NatsAuth()
    with capture_logs() as logs:
        nats_connect.warn_if_open(["nats://127.0.0.1:4222", "nats://localhost:1"], auth)
        nats_connect.warn_if_open(["nats://u:pw@10.0.0.5:4222", "nats://tok@10.0.0.6:1"], auth)
        assert logs == []  # loopback, or credentials given
        nats_connect.warn_if_open(["nats://10.0.0.5:4222"], auth)
        nats_connect.warn_if_open(["nats://10.0.0.5:4222"], auth)  # once per server
        nats_connect.warn_if_open(["tls://10.0.0.7:4222"], NatsAuth(cert="/c.pem"))
    (warning,) = logs
    assert warning["log_level"] == "warning"
    assert "nats://10.0.0.5:4222 is not on this host" in warning["event"]
    assert "without credentials" in warning["event"]
