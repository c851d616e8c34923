"""The user's check as the judge: ``--check "CMD"`` run on a copy of the workspace with
the session's files applied.

The command is the user's own, given on familiar's command line, and runs as the user
through ``/bin/sh -c``; familiar never runs a command a model wrote. It runs in a
temporary copy of the workspace (``.git`` and familiar's state left out), in its own
process group, bounded by ``--check-timeout`` (the whole group is killed when it runs
over). Its exit status, duration and the tail of its output are what the session
records (``checks/<n>.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from familiar.session.files import FileOut, write_tree

TAIL_CHARS = 6000
_KEEP = 64 * 1024  # output kept in memory while the check runs (the last part wins)


@dataclass(frozen=True)
class CheckRun:
    """One run of the user's check."""

    command: str
    files_sha256: str
    exit_code: int | None  # None: it timed out or could not start
    timed_out: bool
    duration_s: float
    tail: str

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> CheckRun | None:
        try:
            return cls(
                command=str(data["command"]),
                files_sha256=str(data["files_sha256"]),
                exit_code=None if data["exit_code"] is None else int(data["exit_code"]),
                timed_out=bool(data["timed_out"]),
                duration_s=float(data["duration_s"]),
                tail=str(data["tail"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def summary(self) -> str:
        if self.timed_out:
            return f"check timed out after {self.duration_s:.0f} s"
        if self.exit_code is None:
            return "check could not start"
        verdict = "passed" if self.passed else f"failed (exit {self.exit_code})"
        return f"check {verdict} in {self.duration_s:.1f} s"


def files_digest(files: Sequence[FileOut]) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f.path.encode() + b"\0" + f.sha256.encode() + b"\n")
    return h.hexdigest()


def _copy_workspace(root: Path, into: Path, leave_out: Sequence[Path]) -> None:
    skip = {p.resolve() for p in leave_out}

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory).resolve()
        return {n for n in names if n == ".git" or (here / n).resolve() in skip}

    shutil.copytree(root, into, symlinks=True, ignore=ignore, dirs_exist_ok=True)


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= TAIL_CHARS else "…" + text[-TAIL_CHARS:]


async def run_check(
    command: str,
    root: Path,
    files: Sequence[FileOut],
    *,
    timeout_s: float,
    leave_out: Sequence[Path] = (),
) -> CheckRun:
    """Run ``command`` in a temporary copy of ``root`` with ``files`` written over it."""
    digest = files_digest(files)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="familiar-check-") as tmp:
        copy = Path(tmp) / root.name
        await asyncio.to_thread(_copy_workspace, root, copy, leave_out)
        await asyncio.to_thread(write_tree, files, copy)
        try:
            proc = await asyncio.create_subprocess_shell(
                command,
                cwd=copy,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own group: a timeout kills every child
            )
        except OSError as exc:
            return CheckRun(command, digest, None, False, 0.0, f"cannot start: {exc}")
        kept = bytearray()

        async def read() -> None:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                kept.extend(chunk)
                if len(kept) > _KEEP:
                    del kept[: len(kept) - _KEEP]

        timed_out = False
        try:
            async with asyncio.timeout(timeout_s):
                await read()
                await proc.wait()
        except TimeoutError:
            timed_out = True
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())
        duration = round(time.monotonic() - started, 3)
        code = None if timed_out else proc.returncode
        return CheckRun(command, digest, code, timed_out, duration, _tail(bytes(kept)))


def files_named(tail: str, files: Sequence[FileOut]) -> set[str]:
    """The session's files a check's output mentions (by path, else by file name)."""
    named = {f.path for f in files if f.path in tail}
    if named:
        return named
    return {f.path for f in files if os.path.basename(f.path) in tail}
