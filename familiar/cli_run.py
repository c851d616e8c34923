"""``familiar run`` and ``familiar sessions``: agent sessions from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from familiar import signals
from familiar.config import Config, find_workspace, load_config, state_home
from familiar.context import bound_correlation_id, new_correlation_id
from familiar.errors import ConfigError, StateError
from familiar.lang import detect_lang
from familiar.store import read_record, write_text_atomic

if TYPE_CHECKING:
    from familiar.fleet import Fleet
    from familiar.seats import SeatsStatistics
    from familiar.session.context import Context


def add_run_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    run = sub.add_parser(
        "run",
        help="run an agent session: plan, fan out to workers, integrate, translate",
        description="Run TASK as an agent session. The planner (grandpa, else the strongest "
        "worker) splits it into subtasks with pinned decisions; code routes hard subtasks "
        "to naughty and easy ones to kindergarten; the planner merges the results. "
        "Exit codes: 0 done, 1 the session failed (or its check still fails), 2 usage or "
        "configuration error.",
        epilog="examples:\n"
        '  familiar run "Write a migration guide for our API v2"\n'
        '  familiar run "Add a parse_iso function with tests" --context src/ tests/ \\\n'
        '      --check "python -m pytest -q" --out out/\n'
        "  familiar run --resume last --apply    # write the files into the workspace\n"
        "\n--check runs YOUR command (via /bin/sh, as you) on a temporary copy of the\n"
        "workspace with the session's files applied; familiar never runs a command a\n"
        "model wrote.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(run)
    run.add_argument("task", nargs="?", help="the task text")
    run.add_argument("--task-file", type=Path, metavar="FILE", help="read the task from FILE")
    run.add_argument(
        "--resume", metavar="ID", help="continue session ID without redoing finished subtasks"
    )
    run.add_argument(
        "--roles",
        metavar="STRING",
        help="role configuration for this run only "
        "(overrides CLAUDE.md), e.g. 'naughty x kindergarten'",
    )
    run.add_argument(
        "--lang",
        choices=("en", "ja"),
        help="language of the final result (default: the task's language)",
    )
    run.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="also write the result to DIR/result.md and the files the session wrote under DIR",
    )
    run.add_argument(
        "--context",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="workspace files, directories or globs the session sees (directories honour "
        ".gitignore; hidden, binary and secret-looking files are left out unless named)",
    )
    run.add_argument(
        "--context-tokens",
        type=int,
        metavar="N",
        help="token budget of the context (default: from the smallest context window the "
        "planner and worker servers report)",
    )
    run.add_argument(
        "--apply",
        action="store_true",
        help="write the session's files into the workspace (refuses to overwrite "
        "uncommitted changes; the change is recorded as apply.diff in the session)",
    )
    run.add_argument(
        "--force", action="store_true", help="with --apply: overwrite uncommitted changes too"
    )
    run.add_argument(
        "--check",
        metavar="CMD",
        help="your own command that judges the files (e.g. 'python -m pytest -q'), run on "
        "a copy of the workspace; a failure gets one revision round",
    )
    run.add_argument(
        "--check-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds the check may run (default 600)",
    )
    run.add_argument(
        "--max-subtasks",
        type=int,
        default=6,
        metavar="N",
        help="upper bound on the plan's subtasks (default 6)",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary on stdout (id, status, result) instead of the result",
    )
    run.add_argument(
        "--telemetry-content",
        action="store_true",
        help="include prompts and outputs in telemetry events (off by default)",
    )
    run.set_defaults(func=cmd_run)

    tele = sub.add_parser("telemetry", help="telemetry to Vector: status, flush the spill file")
    tele_sub = tele.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, helptext in (
        ("status", "sent, spilled, dropped counts and the spill backlog"),
        ("flush", "replay the spill file to Vector now"),
    ):
        p = tele_sub.add_parser(name, help=helptext)
        common(p)
        p.add_argument(
            "--json",
            action="store_true",
            help="print the counts as JSON on stdout"
            if name == "status"
            else "print what was replayed and the backlog left as JSON on stdout",
        )
        p.set_defaults(func=cmd_telemetry, action=name)

    sessions = sub.add_parser("sessions", help="list sessions with status and timings")
    common(sessions)
    sessions.add_argument(
        "--json", action="store_true", help="print the sessions as a JSON array on stdout"
    )
    sessions.set_defaults(func=cmd_sessions)


def _task(args: argparse.Namespace) -> str:
    """The task text; a task file's front matter ``context:`` list joins ``--context``
    (its paths relative to the workspace)."""
    from familiar.session.context import task_front_matter

    if args.task and args.task_file:
        raise ConfigError("give the task as text or with --task-file, not both")
    if args.task_file:
        try:
            text: str = args.task_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --task-file {args.task_file}: {exc}") from None
        paths, text = task_front_matter(text)
        args.task_context = paths
    else:
        text = args.task or ""
    if not text.strip():
        raise ConfigError('no task given: familiar run "TASK" (or --task-file FILE)')
    return text


@dataclass
class _Workspace:
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


def _resolve_id(home: Path, given: str) -> str:
    """A session id from the full id, a unique prefix, or ``last``."""
    root = home / "sessions"
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


def _workspace(
    args: argparse.Namespace, cfg: Config, recorded: dict[str, Any] | None, directory: Path | None
) -> _Workspace:
    """The workspace side of a run, checked before anything is written (exit 2)."""
    from familiar.session.context import gather, reread

    if args.force and not args.apply:
        raise ConfigError("--force only goes with --apply")
    if args.context_tokens is not None and args.context_tokens < 1:
        raise ConfigError("--context-tokens must be a positive number of tokens")
    if not 0 < args.check_timeout <= 86400:
        raise ConfigError("--check-timeout must be between 0 and 86400 seconds")
    if args.check is not None and not args.check.strip():
        raise ConfigError("--check needs a command, e.g. --check 'python -m pytest -q'")
    ws = _Workspace(check_timeout_s=args.check_timeout)
    recorded = recorded or {}
    ws.check = args.check or recorded.get("check")
    if args.check is None and isinstance(recorded.get("check_timeout_s"), (int, float)):
        ws.check_timeout_s = float(recorded["check_timeout_s"])
    task_context = getattr(args, "task_context", None)
    ws.files = bool(
        args.context or task_context or args.out or args.apply or ws.check or recorded.get("files")
    )
    if args.out is not None and args.out.resolve() == cfg.workspace.resolve():
        raise ConfigError("--out is the workspace itself: use --apply to write files there")
    forbidden = [cfg.home]
    if directory is not None and (directory / "context.json").exists():
        if args.context:
            raise ConfigError("--resume keeps the recorded context; do not give --context")
        from familiar.session import SessionStore

        record = SessionStore(directory).read_context() or {}
        ws.context, ws.warnings = reread(cfg.workspace, record)
        ws.context_fixed = True
    elif args.context or getattr(args, "task_context", None):
        budget = args.context_tokens or 10**9
        skip = forbidden
        ws.context = gather(
            cfg.workspace, args.context, budget, budget_source="--context-tokens", skip=skip
        )
        from_file = getattr(args, "task_context", None) or []
        if from_file:
            extra = gather(cfg.workspace, from_file, budget, cwd=cfg.workspace, skip=skip)
            ws.context = ws.context.joined(extra)
        ws.context_fixed = args.context_tokens is not None
    return ws


def _prepare(args: argparse.Namespace) -> tuple[Config, Path, str, _Workspace]:
    from familiar.session import check_resumable, check_runnable, create_session_dir

    if not 1 <= args.max_subtasks <= 8:
        raise ConfigError("--max-subtasks must be between 1 and 8")
    if args.resume:
        if args.task or args.task_file:
            raise ConfigError("--resume continues a recorded task; do not give a new one")
        home = state_home(find_workspace(args.workspace))
        sid = _resolve_id(home, args.resume)
        directory = home / "sessions" / sid
        recorded = read_record(directory / "config.json", "session config")
        check_resumable(directory)
        roles = args.roles or recorded.get("roles")
        if not isinstance(roles, str):
            raise StateError(f"session config {directory / 'config.json'} is corrupt (no roles)")
        cfg = load_config(args.workspace, args.slots, roles)
        try:
            task = (directory / "task.md").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"cannot read {directory / 'task.md'}: {exc}") from None
        check_runnable(cfg, detect_lang(task), args.lang)
        state = read_record(directory / "session.json", "session state")
        workspace = state.get("workspace") if isinstance(state.get("workspace"), dict) else None
        return cfg, directory, sid, _workspace(args, cfg, workspace, directory)
    task = _task(args)
    cfg = load_config(args.workspace, args.slots, args.roles)
    check_runnable(cfg, detect_lang(task), args.lang)
    ws = _workspace(args, cfg, None, None)
    sid = new_correlation_id()
    return cfg, create_session_dir(cfg, task, sid), sid, ws


def cmd_run(args: argparse.Namespace) -> int:
    cfg, directory, sid, ws = _prepare(args)
    print(f"session {sid}  ({directory})", file=sys.stderr)
    for warning in ws.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    outcome = signals.run(_run(cfg, directory, sid, args, ws))
    if args.out:
        _write_out(args.out, outcome, directory)
    applied = _apply(cfg, directory, args) if args.apply else None
    if outcome.check:
        print(outcome.check, file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "id": outcome.id,
                    "status": outcome.status,
                    "lang": outcome.lang,
                    "directory": str(outcome.directory),
                    "result": outcome.final,
                    "worker_calls": outcome.asked,
                    "files": list(outcome.files),
                    "check": outcome.check,
                    "applied": applied,
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        print(outcome.final)
    return 0


def _write_out(out: Path, outcome: Any, directory: Path) -> None:
    from familiar.session.files import write_tree
    from familiar.session.workspace import session_files

    try:
        files = session_files(directory)
        names = {f.path for f in files}
        result = "result.md" if "result.md" not in names else "familiar-result.md"
        write_text_atomic(out / result, outcome.final or "")
        write_tree(files, out)
    except OSError as exc:
        raise StateError(
            f"session {outcome.id} is done (its result is in {directory / 'final.md'}) but"
            f" --out {out} cannot be written: {exc.strerror or exc}"
        ) from None
    if files:
        print(f"wrote {out / result} and {len(files)} file(s) under {out}", file=sys.stderr)


def _apply(cfg: Config, directory: Path, args: argparse.Namespace) -> list[str]:
    from familiar.session.files import apply
    from familiar.session.workspace import session_files

    files = session_files(directory)
    try:
        diff = apply(files, cfg.workspace, directory, force=args.force)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} (the session is done; its files are in {directory / 'files'};"
            f" apply later with: familiar run --resume {directory.name} --apply --force)"
        ) from None
    changed = sorted({line[6:] for line in diff.splitlines() if line.startswith("+++ b/")})
    print(
        f"applied {len(changed)} changed file(s) to {cfg.workspace}"
        f" (undo: git apply -R {directory / 'apply.diff'})",
        file=sys.stderr,
    )
    return changed


async def _context(cfg: Config, fleet: Fleet, ws: _Workspace) -> Context | None:
    """The context under its final budget: the one given, else the smallest context
    window the planner and workers report, less the planner's answer and the prompt."""
    from familiar.routing import planner_role
    from familiar.session.window import smallest_window

    if ws.context is None or ws.context_fixed:
        return ws.context
    planner = planner_role(cfg)
    roles = (planner, *cfg.role_config.workers)
    clients = [fleet[cfg.slots_for(r)[0].name] for r in dict.fromkeys(roles)]
    window, source = await smallest_window(clients)
    reserve = cfg.roles[planner].sampling.max_tokens + PROMPT_RESERVE
    return ws.context.within(max(MIN_CONTEXT, window - reserve), source)


PROMPT_RESERVE = 1500  # tokens of a planner request that are not context
MIN_CONTEXT = 256


async def _run(
    cfg: Config, directory: Path, sid: str, args: argparse.Namespace, ws: _Workspace
) -> Any:
    from familiar.fleet import Fleet
    from familiar.ledger import make_ledger
    from familiar.session import Session, SessionStore
    from familiar.session.files import FilesPolicy
    from familiar.session.workspace import WorkspaceOptions
    from familiar.telemetry import Telemetry
    from familiar.view import LiveView, PlainView

    with bound_correlation_id(sid), ExitStack() as stack:
        telemetry = Telemetry(cfg.home, content=args.telemetry_content)
        async with (
            telemetry,
            Fleet(
                cfg.active_slots,
                home=cfg.home,
                hooks=[telemetry.hook],
                ledger=make_ledger(cfg.fleet),
            ) as fleet,
        ):
            context = await _context(cfg, fleet, ws)
            store = SessionStore(directory)
            if context is not None:
                store.save_context(context.record())
                print(context.summary(), file=sys.stderr)
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
            view: Any
            if sys.stderr.isatty() and not args.json:
                view = stack.enter_context(LiveView(lambda: _seat_statistics(fleet)))
            else:
                view = PlainView()
            workspace = (
                WorkspaceOptions(
                    FilesPolicy(cfg.workspace, (cfg.home, cfg.workspace / ".familiar")),
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
                view=view,
                lang=args.lang,
                max_subtasks=args.max_subtasks,
                telemetry=telemetry,
                context=context,
                workspace=workspace,
            )
            session.state.record(workspace=ws.record())
            return await session.run()


def _seat_statistics(fleet: Fleet) -> dict[str, SeatsStatistics]:
    """A seats snapshot per deployment, named by the slots that share it."""
    out: dict[str, SeatsStatistics] = {}
    for seats in fleet.seats.values():
        names = ",".join(c.slot.name for c in fleet.clients.values() if c.seats is seats)
        out[names] = seats.statistics()
    return out


def cmd_sessions(args: argparse.Namespace) -> int:
    from familiar.session import list_sessions

    rows = list_sessions(state_home(find_workspace(args.workspace)))
    if args.json:
        print(json.dumps([r.model_dump() for r in rows], indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no sessions yet")
        return 0
    if not sys.stdout.isatty():  # a log or a pipe: whole lines, never cut to a width
        for r in rows:
            seconds = "" if r.duration_s is None else str(r.duration_s)
            print("\t".join((r.id, r.status, r.roles, seconds, r.error or r.task)))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "status", "roles", "seconds", "task")
    for r in rows:
        table.add_row(
            r.id,
            r.status,
            r.roles,
            "" if r.duration_s is None else str(r.duration_s),
            r.error or r.task,
        )
    Console().print(table)
    return 0


def cmd_telemetry(args: argparse.Namespace) -> int:
    from familiar.logs import redact_url
    from familiar.telemetry import Telemetry

    home = state_home(find_workspace(args.workspace))
    telemetry = Telemetry(home, enabled=True)
    url = redact_url(telemetry.url)  # a remote sender's URL may carry a password
    if args.action == "flush":
        sent, backlog = signals.run(_flush(telemetry))
        if args.json:
            print(json.dumps({"url": url, "replayed": sent, "backlog": backlog}))
        else:
            print(f"replayed {sent} event(s) to {url}; backlog {backlog}")
        return 0 if backlog == 0 else 1
    stats = telemetry.load_stats()
    spill = telemetry.spill_info()
    info = {
        "url": url,
        "enabled": Telemetry(home).enabled,
        "sent": stats.get("sent", 0),
        "spilled": stats.get("spilled", 0),
        "replayed": stats.get("replayed", 0),
        "dropped": stats.get("dropped", 0),
        "refused": stats.get("refused", 0),
        "corrupt": stats.get("corrupt", 0),
        "backlog": spill["backlog"],
        "backlog_corrupt": spill["corrupt"],
        "spill_file": str(telemetry.spill_path),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>15}: {value}")
    return 0


async def _flush(telemetry: Any) -> tuple[int, int]:
    from familiar.errors import TelemetryUnavailable

    try:
        await telemetry.flush_spill()
    except TelemetryUnavailable:
        pass  # Vector went away part way: what was delivered is counted below
    return int(telemetry.counts["replayed"]), telemetry.backlog()
