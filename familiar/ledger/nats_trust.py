"""The fleet key: records on the bus that a bus writer cannot forge.

With ``FAMILIAR_FLEET_KEY`` (the secret itself) or ``FAMILIAR_FLEET_KEY_FILE`` (a file
holding it) set to the same value on every familiar host, every record familiar puts on
NATS that decides an output or a cap (stored results, shared chunks, seat and waiter
records, deployment notes) carries ``"mac"``: HMAC-SHA256 over its kind, its key (job id,
chunk key, seat key) and its canonical JSON. A reader checks it before use; a record that
fails (forged, copied under another key, or written by a familiar without the key) is
ignored, counted, and reported once per process with one warning line.

Without a key nothing is signed or checked: anyone who may write familiar's buckets can
put any text in place of a translation (``ok``, exit 0) or any row in the chunk cache.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections import Counter
from typing import Any

import structlog

from familiar.errors import ConfigError

log = structlog.get_logger("familiar.ledger")

__all__ = ["FleetKey", "canonical"]

MIN_KEY = 16  # characters: a guessable key protects nothing
_warned = False


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


class FleetKey:
    """Signs and checks records; a no-op without a key."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret
        self.rejected: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self._secret is not None

    @classmethod
    def from_env(cls) -> FleetKey:
        value = os.environ.get("FAMILIAR_FLEET_KEY")
        path = os.environ.get("FAMILIAR_FLEET_KEY_FILE", "").strip()
        if value is not None and path:
            raise ConfigError("set FAMILIAR_FLEET_KEY or FAMILIAR_FLEET_KEY_FILE, not both")
        where = "FAMILIAR_FLEET_KEY"
        if path:
            where = f"FAMILIAR_FLEET_KEY_FILE ({path})"
            try:
                with open(path, encoding="utf-8") as f:
                    value = f.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{where} cannot be read: {exc.__class__.__name__}") from None
            value = value.rstrip("\r\n")
        if value is None:
            return cls()
        if value != value.strip():
            raise ConfigError(f"{where} has spaces around the key: remove them")
        if len(value) < MIN_KEY:
            raise ConfigError(f"{where} is shorter than {MIN_KEY} characters: use a random one")
        from familiar.logs import register_secret

        register_secret(value)
        return cls(value.encode())

    def _mac(self, kind: str, key: str, obj: Any) -> str:
        assert self._secret is not None
        text = kind.encode() + b"\n" + key.encode() + b"\n" + canonical(obj)
        return hmac.new(self._secret, text, hashlib.sha256).hexdigest()

    def seal(self, kind: str, key: str, data: bytes) -> bytes:
        """``data`` (a JSON object) with its ``mac``; unchanged without a key."""
        if self._secret is None:
            return data
        obj = json.loads(data)
        obj.pop("mac", None)
        return canonical({**obj, "mac": self._mac(kind, key, obj)})

    def check(self, kind: str, key: str, data: bytes) -> bytes | None:
        """``data`` if its ``mac`` is right (or there is no key); else ``None``, counted
        and (the first time in this process) one warning line."""
        if self._secret is None:
            return data
        try:
            obj = json.loads(data)
            mac = obj.pop("mac") if isinstance(obj, dict) else None
        except (ValueError, TypeError, KeyError):
            mac = obj = None
        if isinstance(mac, str) and hmac.compare_digest(mac, self._mac(kind, key, obj)):
            return data
        self.rejected[kind] += 1
        global _warned
        if not _warned:
            _warned = True
            log.warning(
                f"a {kind} record on the bus ({key}) fails the FAMILIAR_FLEET_KEY check and is "
                "ignored: forged, or written by a familiar with another key or none; any "
                "later ones are ignored and counted"
            )
        return None
