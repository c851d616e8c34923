"""Agent sessions as a service: what ``familiar run`` does, callable by the CLI and the
MCP server alike (house rule 17: none of them builds clients on its own).

:func:`prepare` checks everything and makes (or finds) the session directory before
any server is asked; :func:`run_session` runs it on its fleet; :func:`deliver` writes
``--out`` and applies ``--apply``. Messages for the user go to a ``notice`` callable
(the CLI prints them on stderr), progress to the view the caller gives.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from familiar.config.workspace import Config, find_workspace, load_config, state_home
from familiar.context import bound_correlation_id, new_correlation_id
from familiar.errors import ConfigError, StateError
from familiar.lang import detect_lang
from familiar.store import read_record, write_text_atomic

if TYPE_CHECKING:
    from familiar.fleet import Fleet
    from familiar.session.context import Context
    from familiar.session.flow import SessionOutcome
    from familiar.session.view import SessionView

Notice = Callable[[str], None]
ViewFactory = Callable[["Fleet"], AbstractContextManager["SessionView"]]


@dataclass
class RunRequest:
    """A session to run: the options of ``familiar run`` (same names)."""

    task: str | None = None
    task_file: Path | None = None
    resume: str | None = None
    roles: str | None = None
    lang: str | None = None
    max_subtasks: int = 6
    context: list[str] = field(default_factory=list)
    context_tokens: int | None = None
    out: Path | None = None
    apply: bool = False
    force: bool = False
    check: str | None = None
    check_timeout: float = 600.0
    telemetry_content: bool = False
    workspace: Path | None = None
    slots: Path | None = None
    cwd: Path | None = None  # where relative --context paths start (default: the cwd)
    task_context: list[str] = field(default_factory=list)  # from a task file's front matter

    @classmethod
    def from_namespace(cls, ns: Any) -> RunRequest:
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})


@dataclass(frozen=True)
class Prepared:
    cfg: Config
    directory: Path
    sid: str
    ws: WorkspacePlan


def task_text(req: RunRequest) -> str:
    """The task text; a task file's front matter ``context:`` list joins ``--context``
    (its paths relative to the workspace)."""
    from familiar.session.context import task_front_matter

    if req.task and req.task_file:
        raise ConfigError("give the task as text or with --task-file, not both")
    if req.task_file:
        try:
            text: str = req.task_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --task-file {req.task_file}: {exc}") from None
        paths, text = task_front_matter(text)
        req.task_context = paths
    else:
        text = req.task or ""
    if not text.strip():
        raise ConfigError('no task given: familiar run "TASK" (or --task-file FILE)')
    return text


@dataclass
class WorkspacePlan:
    """What a run does with the workspace: the context it sees, the files it writes,
    the user's check (recorded in session.json, so a resume does the same)."""

    files: bool = False
    context: Context | None = None
    context_fixed: bool = False  # budget given (or recorded): no window probe
    check: str | None = None
    check_timeout_s: float = 600.0
    warnings: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"files": self.files, "check": self.check, "check_timeout_s": self.check_timeout_s}


def resolve_id(home: Path, given: str) -> str:
    """A session id from the full id, a unique prefix, or ``last``."""
    root = home / "sessions"
    if given != "last" and not _ID.fullmatch(given):
        raise ConfigError(
            f"no session {given!r} (an id is hex digits, a unique prefix of one, or last)"
        )
    if (root / given / "task.md").is_file():
        return given
    if given == "last":
        from familiar.session import list_sessions

        rows = [r for r in list_sessions(home) if r.status != "unreadable"]
        if not rows:
            raise ConfigError(f"no session under {root} to resume")
        return max(rows, key=lambda r: r.started or 0.0).id
    found = sorted(d.name for d in root.glob(f"{given}*") if (d / "task.md").is_file())
    if len(found) == 1 and len(given) >= 4:
        return found[0]
    if len(found) > 1:
        raise ConfigError(f"session id {given!r} is ambiguous: {', '.join(found[:5])}")
    raise ConfigError(f"no session {given!r} under {root}")


_ID = re.compile(r"[0-9a-f]{1,64}")


def _recorded_workspace(state: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """``session.json``'s workspace record, checked (a corrupt one is a StateError)."""
    record = state.get("workspace")
    if record is None:
        return None
    ok = (
        isinstance(record, dict)
        and isinstance(record.get("files", False), bool)
        and (record.get("check") is None or isinstance(record.get("check"), str))
        and isinstance(record.get("check_timeout_s", 600.0), (int, float))
        and not isinstance(record.get("check_timeout_s"), bool)
        and 0 < float(record.get("check_timeout_s", 600.0)) <= 86400
    )
    if not ok:
        raise StateError(f"session state {path} is corrupt (its workspace record)")
    return dict(record)


def _writable_dir(path: Path, what: str) -> None:
    """``path`` is, or can be made, a directory we can write (checked before any work)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{what} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} cannot be written ({probe} is not writable)")


def plan_workspace(
    req: RunRequest, cfg: Config, recorded: dict[str, Any] | None, directory: Path | None
) -> WorkspacePlan:
    """The workspace side of a run, checked before anything is written (exit 2)."""
    from familiar.session.context import gather, reread

    if req.force and not req.apply:
        raise ConfigError("--force only goes with --apply")
    if req.context_tokens is not None and req.context_tokens < 1:
        raise ConfigError("--context-tokens must be a positive number of tokens")
    if not 0 < req.check_timeout <= 86400:
        raise ConfigError("--check-timeout must be between 0 and 86400 seconds")
    if req.check is not None and not req.check.strip():
        raise ConfigError("--check needs a command, e.g. --check 'python -m pytest -q'")
    ws = WorkspacePlan(check_timeout_s=req.check_timeout)
    recorded = recorded or {}
    ws.check = req.check or recorded.get("check")
    if req.check is None and isinstance(recorded.get("check_timeout_s"), (int, float)):
        ws.check_timeout_s = float(recorded["check_timeout_s"])
    task_context = req.task_context
    ws.files = bool(
        req.context or task_context or req.out or req.apply or ws.check or recorded.get("files")
    )
    if req.out is not None:
        if req.out.resolve() == cfg.workspace.resolve():
            raise ConfigError("--out is the workspace itself: use --apply to write files there")
        _writable_dir(req.out, "--out")
    forbidden = [cfg.home]
    if directory is not None and (directory / "context.json").exists():
        if req.context:
            raise ConfigError("--resume keeps the recorded context; do not give --context")
        from familiar.session import SessionStore

        record = SessionStore(directory).read_context() or {}
        ws.context, ws.warnings = reread(cfg.workspace, record)
        ws.context_fixed = True
    elif req.context or req.task_context:
        budget = req.context_tokens or 10**9
        skip = forbidden
        ws.context = gather(
            cfg.workspace,
            req.context,
            budget,
            budget_source="--context-tokens",
            cwd=req.cwd,
            skip=skip,
        )
        from_file = req.task_context or []
        if from_file:
            extra = gather(cfg.workspace, from_file, budget, cwd=cfg.workspace, skip=skip)
            ws.context = ws.context.joined(extra)
        ws.context_fixed = req.context_tokens is not None
    return ws


def prepare(req: RunRequest) -> Prepared:
    """Everything checked and the session directory made (a new session) or found (a
    resume), before any server is asked; ConfigError/StateError (exit 2) otherwise."""
    from familiar.session import check_resumable, check_runnable, create_session_dir

    if not 1 <= req.max_subtasks <= 8:
        raise ConfigError("--max-subtasks must be between 1 and 8")
    if req.resume:
        if req.task or req.task_file:
            raise ConfigError("--resume continues a recorded task; do not give a new one")
        home = state_home(find_workspace(req.workspace))
        sid = resolve_id(home, req.resume)
        directory = home / "sessions" / sid
        recorded = read_record(directory / "config.json", "session config")
        check_resumable(directory)
        roles = req.roles or recorded.get("roles")
        if not isinstance(roles, str):
            raise StateError(f"session config {directory / 'config.json'} is corrupt (no roles)")
        cfg = load_config(req.workspace, req.slots, roles)
        try:
            task = (directory / "task.md").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"cannot read {directory / 'task.md'}: {exc}") from None
        check_runnable(cfg, detect_lang(task), req.lang)
        state = read_record(directory / "session.json", "session state")
        workspace = _recorded_workspace(state, directory / "session.json")
        ran_in = recorded.get("workspace")
        if isinstance(ran_in, str) and Path(ran_in).resolve() != cfg.workspace.resolve():
            raise ConfigError(
                f"session {sid} ran in the workspace {ran_in}, not {cfg.workspace}:"
                f" resume it there (--workspace {ran_in})"
            )
        return Prepared(cfg, directory, sid, plan_workspace(req, cfg, workspace, directory))
    task = task_text(req)
    cfg = load_config(req.workspace, req.slots, req.roles)
    check_runnable(cfg, detect_lang(task), req.lang)
    ws = plan_workspace(req, cfg, None, None)
    sid = new_correlation_id()
    return Prepared(cfg, create_session_dir(cfg, task, sid), sid, ws)


def write_out(out: Path, outcome: SessionOutcome, directory: Path, notice: Notice) -> None:
    """``--out``: the result as ``result.md`` and the session's files under ``out``."""
    from familiar.session.files import write_tree
    from familiar.session.workspace import session_files

    files = session_files(directory)
    # the deliverable is always result.md; a session file of that name stays in the
    # session directory only
    shadowed = [f for f in files if f.path == RESULT_NAME]
    files = [f for f in files if f.path != RESULT_NAME]
    try:
        write_text_atomic(out / RESULT_NAME, outcome.final or "")
        write_tree(files, out)
    except OSError as exc:
        raise StateError(
            f"session {outcome.id} is done (its result is in {directory / 'final.md'}) but"
            f" --out {out} cannot be written: {exc.strerror or exc}"
        ) from None
    if shadowed:
        notice(
            f"the session's own {RESULT_NAME} was not written to --out (the result is there);"
            f" it is in {directory / 'files' / RESULT_NAME}"
        )
    if files:
        notice(f"wrote {out / RESULT_NAME} and {len(files)} file(s) under {out}")


def apply_files(cfg: Config, directory: Path, req: RunRequest, notice: Notice) -> list[str]:
    """``--apply``: the session's files into the workspace; the paths changed."""
    from familiar.session.files import apply
    from familiar.session.workspace import session_files

    files = session_files(directory)
    try:
        diff, record = apply(
            files, cfg.workspace, directory, force=req.force, forbidden=forbidden_dirs(cfg)
        )
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} (the session is done; its files are in {directory / 'files'};"
            f" apply later with: familiar run --resume {directory.name} --apply --force)"
        ) from None
    changed = sorted({line[6:] for line in diff.splitlines() if line.startswith("+++ b/")})
    notice(
        f"applied {len(changed)} changed file(s) to {cfg.workspace} (undo: git apply -R {record})"
    )
    return changed


RESULT_NAME = "result.md"


def forbidden_dirs(cfg: Config) -> tuple[Path, ...]:
    """Where a session's files may never go: familiar's state."""
    return (cfg.home, cfg.workspace / ".familiar")


async def final_context(cfg: Config, fleet: Fleet, ws: WorkspacePlan) -> Context | None:
    """The context under its final budget: the one given, else the smallest context
    window the planner and workers report, less the planner's answer and the prompt."""
    from familiar.routing import planner_role
    from familiar.session.window import smallest_window

    if ws.context is None or ws.context_fixed:
        return ws.context
    planner = planner_role(cfg)
    roles = (planner, *cfg.role_config.workers)
    clients = [fleet.client_for(cfg, r) for r in dict.fromkeys(roles)]
    window, source = await smallest_window(clients)
    reserve = cfg.roles[planner].sampling.max_tokens + PROMPT_RESERVE
    return ws.context.within(max(MIN_CONTEXT, window - reserve), source)


PROMPT_RESERVE = 1500  # tokens of a planner request that are not context
MIN_CONTEXT = 256


async def run_session(
    prepared: Prepared,
    req: RunRequest,
    *,
    view: ViewFactory,
    notice: Notice,
) -> SessionOutcome:
    """Run a prepared session on its fleet: the final context (recorded, one line to
    ``notice``), the session itself with the view ``view(fleet)`` gives."""
    cfg, directory, sid, ws = prepared.cfg, prepared.directory, prepared.sid, prepared.ws
    from familiar.fleet import Fleet
    from familiar.ledger import make_ledger
    from familiar.session import Session, SessionStore
    from familiar.session.files import FilesPolicy
    from familiar.session.workspace import WorkspaceOptions
    from familiar.telemetry import Telemetry

    with bound_correlation_id(sid), ExitStack() as stack:
        telemetry = Telemetry(cfg.home, content=req.telemetry_content)
        async with (
            telemetry,
            Fleet(
                cfg.active_slots,
                home=cfg.home,
                hooks=[telemetry.hook],
                ledger=make_ledger(cfg.fleet),
            ) as fleet,
        ):
            context = await final_context(cfg, fleet, ws)
            store = SessionStore(directory)
            if context is not None:
                store.save_context(context.record())
                notice(context.summary())
                telemetry.emit(
                    "context.built",
                    {
                        "files": len(context.included),
                        "tokens": sum(f.tokens for f in context.included),
                        "cut": sum(f.status == "cut" for f in context.files),
                        "skipped": sum(f.status == "skipped" for f in context.files),
                        "budget": context.budget,
                    },
                )
            shown = stack.enter_context(view(fleet))
            workspace = (
                WorkspaceOptions(
                    FilesPolicy(cfg.workspace, forbidden_dirs(cfg)),
                    ws.check,
                    ws.check_timeout_s,
                )
                if ws.files
                else None
            )
            session = Session(
                cfg,
                fleet,
                directory,
                view=shown,
                lang=req.lang,
                max_subtasks=req.max_subtasks,
                telemetry=telemetry,
                context=context,
                workspace=workspace,
            )
            session.state.record(workspace=ws.record())
            return await session.run()


def deliver(
    prepared: Prepared, req: RunRequest, outcome: SessionOutcome, notice: Notice
) -> list[str] | None:
    """After a finished session: ``--out`` written, ``--apply`` applied (the paths it
    changed; None without ``--apply``)."""
    if req.out:
        write_out(req.out, outcome, prepared.directory, notice)
    if not req.apply:
        return None
    return apply_files(prepared.cfg, prepared.directory, req, notice)


def seat_statistics(fleet: Fleet) -> dict[str, Any]:
    """A seats snapshot per deployment, named by the slots that share it."""
    out: dict[str, Any] = {}
    for seats in fleet.seats.values():
        names = ",".join(c.slot.name for c in fleet.clients.values() if c.seats is seats)
        out[names] = seats.statistics()
    return out
