"""Helpers of the hostile-input tests (tests/integration/test_hostile_*.py): workspaces,
and familiar run as a real command, optionally with a umask or, for root, without the
capabilities that override file permissions (so mode bits hold)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.support.scripts import ARTICLE, report_rows

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
Result = tuple[int, str, str, float]  # exit code, stdout, stderr, seconds


def workspace(root: Path, url: str, *, parallel: int = 2, extra: str = "") -> Path:
    """A workspace: translator + naughty on one deployment (same URL and model)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "slots.toml").write_text(
        f'[slots.translator]\nurl = "{url}"\nmodel = "general-llm"\nruntime = "vllm"\n'
        f"parallel = {parallel}\ntimeout_s = 30\n{extra}"
        f'[slots.naughty]\nurl = "{url}"\nmodel = "general-llm"\nruntime = "vllm"\n'
        f"parallel = {parallel}\n"
    )
    (root / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    return root


def sources(root: Path, n: int = 2) -> Path:
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (src / f"a{i}.md").write_text(ARTICLE.replace("緑茶", f"緑茶{i}"), encoding="utf-8")
    return src


def preexec(confined: bool, umask: int | None) -> Callable[[], None] | None:
    """What the child runs before exec: the umask, and for root (``confined``) dropping
    the capabilities that override file permissions, so that mode bits hold for it too."""
    if not confined and umask is None:
        return None

    def pre() -> None:
        if umask is not None:
            os.umask(umask)
        if confined and os.getuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
                if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return pre


async def cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    drop: Sequence[str] = (),
    confined: bool = False,
    umask: int | None = None,
    limit: float = 60,
) -> Result:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    for key in drop:
        full.pop(key, None)
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "familiar",
        *args,
        cwd=cwd,
        env=full,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec(confined, umask),
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - start


def rows(stdout: str) -> dict[str, dict[str, object]]:
    return {Path(str(r["path"])).name: r for r in report_rows(stdout)}


def no_traceback(err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err


async def batch(ws: Path, confined: bool = False, umask: int | None = None) -> Result:
    env = {"FAMILIAR_HOME": str(ws / ".home"), "FAMILIAR_LEDGER_DIR": str(ws / ".ledger")}
    return await cli(
        "translate",
        "src",
        "--to",
        "en",
        "--out",
        "out",
        "--json",
        cwd=ws,
        env=env,
        confined=confined,
        umask=umask,
    )
