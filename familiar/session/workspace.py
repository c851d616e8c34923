"""A session on the user's workspace: the files it wrote, merged and recorded, and the
user's check as the judge, with one revision round when it fails.

After the integration, the file sets of the subtasks are merged in plan order (a path
several subtasks wrote takes the integrator's version when it gave one, else the last
writer's; recorded as a conflict). The merged tree is written to the session directory
(``files/`` and ``files.json``). With ``--check``, the user's command runs on a copy of
the workspace with those files applied; when it fails, the subtasks that wrote the
files its output names are asked again with the failing output (the integrator when no
file is named), and the check runs once more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from familiar.dispatch import Pool
from familiar.errors import AnswerRejected, StateError
from familiar.plan import Plan
from familiar.routing import planner_role, revising_role
from familiar.session import messages as msg
from familiar.session.calls import Calls
from familiar.session.check import CheckRun, files_digest, files_named, run_check
from familiar.session.files import (
    FileOut,
    FilesPolicy,
    Merged,
    merge,
    normalise,
    refused,
    write_tree,
)
from familiar.session.store import SessionStore, SubtaskRecord
from familiar.session.view import SessionView
from familiar.session.worker import SubtaskWorker
from familiar.telemetry import Telemetry

log = structlog.get_logger("familiar.session")

CHECK_NOTE_CHARS = 3000


@dataclass(frozen=True)
class WorkspaceOptions:
    """What a workspace session may do: write files (under ``policy``), and run the
    user's ``check`` command (None: no check) for at most ``check_timeout_s``."""

    policy: FilesPolicy
    check: str | None = None
    check_timeout_s: float = 600.0


def check_note(run: CheckRun, files: Sequence[FileOut]) -> str:
    """What a reviser is told after a failed check: the command, its verdict, the end of
    its output, and the files as they were."""
    tail = run.tail[-CHECK_NOTE_CHARS:]
    return (
        f"The user's check `{run.command}` {run.summary().removeprefix('check ')}."
        f" The end of its output:\n```\n{tail}\n```\n"
        f"The files as they were:\n\n{msg.written(files)}\n\n"
        "Fix the files so that the check passes; answer with every file you change, whole."
    )


def subtask_files(record: SubtaskRecord) -> list[FileOut]:
    return [FileOut(f["path"], f["content"], record.id) for f in record.files]


def checked(files: list[FileOut], policy: FilesPolicy, what: str) -> list[FileOut]:
    """Recorded files whose paths still pass the checks (records are read back from
    disk: trust nothing); a refused one makes the record corrupt (StateError)."""
    for f in files:
        why = refused(f.path, policy.root, policy.forbidden)
        if why is not None or normalise(f.path) != f.path:
            raise StateError(f"{what} is corrupt or no longer safe: {why or f.path}")
    return files


class WorkspaceSteps:
    """The files and check steps of one session."""

    def __init__(
        self,
        options: WorkspaceOptions,
        store: SessionStore,
        calls: Calls,
        worker: SubtaskWorker,
        view: SessionView,
        telemetry: Telemetry,
        pools: Callable[[], Sequence[Pool]],
    ) -> None:
        self.options = options
        self.store = store
        self.calls = calls
        self.worker = worker
        self.view = view
        self.telemetry = telemetry
        self.pools = pools

    def merged(self, plan: Plan, done: Mapping[str, SubtaskRecord]) -> Merged:
        """Every subtask's files in plan order; the integrator's and the fix's versions
        win for the paths they give."""
        policy = self.options.policy
        decided = [
            FileOut(f["path"], f["content"], "integrator") for f in self.store.read_decided()
        ]
        decided = checked(decided, policy, "the integrator's files")
        per_writer = [
            checked(subtask_files(done[s.id]), policy, f"subtask record {s.id}")
            for s in plan.subtasks
            if s.id in done
        ]
        return merge(per_writer, decided)

    def save(self, merged: Merged) -> None:
        tree = self.store.dir / "files"
        write_tree(merged.files, tree)
        self.store.save_files(
            {
                "files": [
                    {
                        "path": f.path,
                        "bytes": len(f.content.encode("utf-8")),
                        "sha256": f.sha256,
                        "writer": f.writer,
                    }
                    for f in merged.files
                ],
                "conflicts": {p: list(w) for p, w in merged.conflicts.items()},
            }
        )

    async def check(self, files: Sequence[FileOut]) -> CheckRun:
        """The user's check on ``files``; a run already recorded for the same files and
        command (a resumed session) is not repeated."""
        command = self.options.check
        assert command is not None
        digest = files_digest(files)
        for recorded in reversed(self.store.read_checks()):
            if recorded.command == command and recorded.files_sha256 == digest:
                return recorded
        self.view.step("checking", command)
        t0 = time.monotonic()
        run = await run_check(
            command,
            self.options.policy.root,
            files,
            timeout_s=self.options.check_timeout_s,
            leave_out=self.options.policy.forbidden,
        )
        self.store.save_check(run.record())
        self.telemetry.emit(
            "check.run",
            {
                "exit_code": run.exit_code,
                "timed_out": run.timed_out,
                "passed": run.passed,
                "duration_ms": round((time.monotonic() - t0) * 1000),
                "files": len(files),
            },
        )
        log.info("check", command=command, result=run.summary())
        return run

    async def judge(
        self, plan: Plan, done: MutableMapping[str, SubtaskRecord]
    ) -> tuple[Merged, CheckRun | None]:
        """Merge and record the files; run the check; on failure one revision round and
        the check again. The files as finally merged, and the last check run."""
        merged = self.merged(plan, done)
        self.save(merged)
        if self.options.check is None:
            return merged, None
        run = await self.check(merged.files)
        if run.passed:
            return merged, run
        await self._revise(plan, done, merged, run)
        merged = self.merged(plan, done)
        self.save(merged)
        return merged, await self.check(merged.files)

    async def _revise(
        self,
        plan: Plan,
        done: MutableMapping[str, SubtaskRecord],
        merged: Merged,
        run: CheckRun,
    ) -> None:
        involved = files_named(run.tail, merged.files)
        writers = sorted(
            {f.writer for f in merged.files if f.path in involved and f.writer in done}
        )
        self.view.step("revising", ", ".join(writers) or "integrator")
        log.info("check failed: revising", writers=writers or ["integrator"])
        if writers:
            pools = {p.role: p for p in self.pools()}
            for sid in writers:
                own = [f for f in merged.files if f.writer == sid]
                pool = pools[revising_role(done[sid].role, tuple(pools))]
                try:
                    done[sid] = await self.worker.run(
                        plan, plan.subtask(sid), pool, done, check_note(run, own)
                    )
                except AnswerRejected as exc:  # its first files stay; the check judges them
                    log.warning("revision refused", subtask=sid, why=str(exc))
            return
        role = planner_role(self.calls.cfg)
        user = check_note(run, merged.files)
        fixed, problem = await self.calls.fix_files(role, self.calls.messages(role, user))
        if problem is not None:
            log.warning("the integrator's fix was refused", why=problem)
            return
        fix = [*self.store.read_fix(), *({"path": f.path, "content": f.content} for f in fixed)]
        self.store.save_fix(fix)


def result_files_record(merged: Merged, run: CheckRun | None) -> dict[str, Any]:
    """What ``session.json`` says about the files and the check."""
    out: dict[str, Any] = {"files": len(merged.files), "conflicts": sorted(merged.conflicts)}
    if run is not None:
        out["check"] = {
            "passed": run.passed,
            "exit_code": run.exit_code,
            "timed_out": run.timed_out,
        }
    return out


def session_files(directory: Path) -> list[FileOut]:
    """The files a finished session wrote, read back from its directory (``files.json``
    and ``files/``); each is checked against its recorded hash."""
    from familiar.store import read_record

    index = directory / "files.json"
    if not index.exists():
        return []
    entries = read_record(index, "files record").get("files")
    if not isinstance(entries, list):
        raise StateError(f"files record {index} is corrupt (no files)")
    out = []
    for entry in entries:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or normalise(path) != path or ".." in path.split("/"):
            raise StateError(f"files record {index} is corrupt (a path {path!r})")
        try:
            content = (directory / "files" / path).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"cannot read the session's file {path}: {exc}") from None
        f = FileOut(path, content, str(entry.get("writer") or ""))
        if f.sha256 != entry.get("sha256"):
            raise StateError(f"the session's file {directory / 'files' / path} changed since")
        out.append(f)
    return out
