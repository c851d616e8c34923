"""What each process of a deployment tells the others through the host ledger's files:
``meta.json`` (label, cap, reserve, for ``familiar fleet``) and ``caps/<token>``, the
cap (``parallel``) this process uses, locked while it runs (the seat policy applies the
strictest live one)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path

from familiar.errors import LedgerSetupError
from familiar.ledger.host_files import listdir, live_cap
from familiar.ledger.host_locks import try_lock
from familiar.ledger.policy import effective_cap

__all__ = ["CAPS_EVERY_S", "HostCaps", "write_meta"]

CAPS_EVERY_S = 1.0  # how often the caps other processes use are read again


def write_meta(folder: Path, label: str, cap: int, reserve: int) -> None:
    """``meta.json`` of a deployment (replaced whole, only when it changes)."""
    data = json.dumps({"label": label, "cap": cap, "reserve": reserve})
    path = folder / "meta.json"
    try:
        if path.read_text(encoding="utf-8") == data:
            return
    except (OSError, UnicodeDecodeError):
        pass
    tmp = folder / f".meta.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LedgerSetupError(f"seat ledger {folder}: {exc.strerror}") from None


class HostCaps:
    """This process's ``caps/<token>`` file, and the caps of the other live processes."""

    def __init__(self, folder: Path, token: str, cap: int, label: str) -> None:
        self._folder, self._token, self.cap, self.label = folder / "caps", token, cap, label
        self._at = -1.0
        self._others: list[int] = []
        self._fd = self._advertise()

    def _advertise(self) -> int | None:
        try:
            self._folder.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(self._folder / self._token, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(self.cap).encode(), 0)
        try_lock(fd, 0)
        return fd

    def others(self) -> list[int]:
        """The caps the other live processes use for this deployment (their slots files
        may disagree on ``parallel``): read at most once a second."""
        now = time.monotonic()
        if now - self._at < CAPS_EVERY_S:
            return self._others
        self._at = now
        caps = []
        for name in listdir(self._folder):
            if name != self._token:
                other = live_cap(self._folder / name)
                if other is not None:
                    caps.append(other)
        strictest = effective_cap(self.cap, caps)
        if strictest < effective_cap(self.cap, self._others):
            import structlog  # only now: `familiar --help` never loads the logger

            structlog.get_logger("familiar.ledger").warning(
                "another familiar process uses a smaller parallel for this deployment;"
                " the strictest applies",
                deployment=self.label,
                parallel=strictest,
                ours=self.cap,
            )
        self._others = caps
        return caps

    def close(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self._folder / self._token).unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
