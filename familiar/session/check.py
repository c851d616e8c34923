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
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from familiar.errors import StateError
from familiar.logs import mask
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
    """A copy of the workspace the check may change at will: ``.git``, familiar's state
    and special files (FIFOs, sockets, devices) left out; a link that points into the
    workspace by an absolute path is made to point into the copy instead, so nothing the
    check or the session's files do can reach the real workspace through it."""
    skip = {p.resolve() for p in leave_out}
    real_root = root.resolve()

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        out = set()
        for n in names:
            path = here / n
            if n == ".git" or path.resolve() in skip:
                out.add(n)
                continue
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                out.add(n)
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                out.add(n)
        return out

    shutil.copytree(root, into, symlinks=True, ignore=ignore, dirs_exist_ok=True)
    for directory, dirs, names in os.walk(into):
        for n in (*dirs, *names):
            link = Path(directory) / n
            if not link.is_symlink():
                continue
            target = os.readlink(link)
            if not os.path.isabs(target):
                continue
            absolute = Path(os.path.normpath(target))
            if absolute == real_root or real_root in absolute.parents:
                mirrored = into / absolute.relative_to(real_root)
                link.unlink()
                link.symlink_to(os.path.relpath(mirrored, link.parent))


def _read_tail(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _KEEP))
            return fh.read()
    except OSError:
        return b""


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
        try:
            await asyncio.to_thread(_copy_workspace, root, copy, leave_out)
            await asyncio.to_thread(write_tree, files, copy)
        except (OSError, shutil.Error, StateError) as exc:
            why = f"cannot prepare the workspace copy for the check: {_first(exc)}"
            return CheckRun(command, digest, None, False, 0.0, why)
        log_path = Path(tmp) / "output.log"
        # the output goes to a file, not a pipe: a child the check leaves running in the
        # background cannot hold the verdict up by keeping a pipe open
        with log_path.open("wb") as log:
            try:
                proc = await asyncio.create_subprocess_shell(
                    command,
                    cwd=copy,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # its own group: a timeout kills every child
                )
            except OSError as exc:
                return CheckRun(command, digest, None, False, 0.0, f"cannot start: {exc}")
        timed_out = False
        try:
            async with asyncio.timeout(timeout_s):
                await proc.wait()
        except TimeoutError:
            timed_out = True
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group, left-overs too
            if proc.returncode is None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())
        kept = _read_tail(log_path)
        duration = round(time.monotonic() - started, 3)
        code = None if timed_out else proc.returncode
        # the output may echo the environment: the fleet's keys never go further
        return CheckRun(command, digest, code, timed_out, duration, mask(_tail(kept)))


def _first(exc: BaseException) -> str:
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        src, _dst, why = exc.args[0][0]
        return f"{src}: {why}"
    return str(getattr(exc, "strerror", None) or exc)


def files_named(tail: str, files: Sequence[FileOut]) -> set[str]:
    """The session's files a check's output mentions (by path, else by file name)."""
    named = {f.path for f in files if f.path in tail}
    if named:
        return named
    return {f.path for f in files if os.path.basename(f.path) in tail}
