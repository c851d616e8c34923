"""``familiar run`` and ``familiar sessions``: agent sessions from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from familiar.cli import signals
from familiar.config.workspace import find_workspace, state_home
from familiar.errors import ConfigError, Terminated
from familiar.store import read_record

if TYPE_CHECKING:
    from familiar.fleet import Fleet


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
    run.add_argument(
        "--task-file",
        type=Path,
        metavar="FILE",
        help="read the task from FILE (front matter 'context: [paths]' adds context, "
        "relative to the workspace)",
    )
    run.add_argument(
        "--resume",
        metavar="ID",
        help="continue session ID (a full id, a unique prefix, or 'last') without redoing "
        "finished subtasks; add --apply to write a finished session's files",
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
        help="workspace files, directories or globs the session sees, relative to the "
        "current directory (directories honour .gitignore; hidden, binary and "
        "secret-looking files are left out unless named one by one); put the task first",
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

    sessions = sub.add_parser(
        "sessions",
        help="list sessions with status and timings, or show one",
        epilog="examples:\n  familiar sessions\n  familiar sessions show last\n"
        "  familiar sessions show 3f2a --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(sessions)
    sessions.add_argument(
        "action", nargs="?", choices=("list", "show"), default="list", help="list (default) or show"
    )
    sessions.add_argument("id", nargs="?", help="with show: a session id, a unique prefix, or last")
    sessions.add_argument(
        "--json",
        action="store_true",
        help="print the sessions (or the one shown) as JSON on stdout",
    )
    sessions.set_defaults(func=cmd_sessions)


def cmd_run(args: argparse.Namespace) -> int:
    from familiar.session import service

    _task_after_context(args)
    req = service.RunRequest.from_namespace(args)
    prepared = service.prepare(req)
    print(f"session {prepared.sid}  ({prepared.directory})", file=sys.stderr)
    for warning in prepared.ws.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    def view(fleet: Fleet) -> AbstractContextManager[Any]:
        from familiar.session.view import LiveView, PlainView

        if sys.stderr.isatty() and not args.json:
            return LiveView(lambda: service.seat_statistics(fleet))
        return nullcontext(PlainView())

    try:
        outcome = signals.run(service.run_session(prepared, req, view=view, notice=_notice))
    except (KeyboardInterrupt, Terminated):
        _notice(
            f"session {prepared.sid} interrupted; resume with:"
            f" familiar run --workspace {prepared.cfg.workspace} --resume {prepared.sid}"
        )
        raise
    applied = service.deliver(prepared, req, outcome, _notice)
    if outcome.check:
        _notice(outcome.check)
    if not _quiet(args):
        _notice(outcome.closing_line())
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


def _task_after_context(args: argparse.Namespace) -> None:
    """``familiar run --context a.py "Add parse_iso"``: --context takes every word after
    it, the task too; a last value that is no path and holds a space (a sentence, not a
    mistyped path) is the task."""
    if args.task or args.task_file or args.resume or not args.context:
        return
    last = args.context[-1]
    if not Path(last).exists() and not set("*?[") & set(last) and " " in last.strip():
        args.task = args.context.pop()


def _quiet(args: argparse.Namespace) -> bool:
    """-q anywhere on the command line (before or after the command)."""
    return any(v for k, v in vars(args).items() if k.split("_")[0] == "quiet")


def _notice(line: str) -> None:
    print(line, file=sys.stderr)


def cmd_sessions(args: argparse.Namespace) -> int:
    from familiar.session import list_sessions

    home = state_home(find_workspace(args.workspace))
    if args.action == "show":
        return _show_session(home, args)
    if args.id is not None:
        raise ConfigError(f"unexpected {args.id!r}: did you mean: familiar sessions show {args.id}")
    rows = list_sessions(home)
    if args.json:
        print(json.dumps([r.model_dump() for r in rows], indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no sessions yet")
        return 0
    head = ("id", "status", "started", "seconds", "roles", "task / reason")
    cells = [
        (
            r.id,
            r.status,
            _when(r.started),
            "" if r.duration_s is None else str(r.duration_s),
            r.roles,
            f"{r.task} -- {r.error}" if r.error else r.task,
        )
        for r in rows
    ]
    if not sys.stdout.isatty():  # a log or a pipe: whole values, never cut to a width
        print("\t".join(head))
        for row in cells:
            print("\t".join(row))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(*head)
    for row in cells:  # rich wraps long values; ids and paths are never cut
        table.add_row(*row)
    Console().print(table)
    return 0


def _when(started: float | None) -> str:
    import time

    return "" if started is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(started))


def _show_session(home: Path, args: argparse.Namespace) -> int:
    from familiar.session.service import resolve_id
    from familiar.session.store import SessionStore

    if args.id is None:
        raise ConfigError("familiar sessions show ID (a full id, a unique prefix, or last)")
    directory = home / "sessions" / resolve_id(home, args.id)
    store = SessionStore(directory)
    state = store.read_state()
    plan = store.read_plan()
    subtasks = []
    for s in plan.subtasks if plan else ():
        path = store.subtask_path(s.id)
        record = read_record(path, "subtask record") if path.exists() else {}
        why = (state.failed or {}).get(s.id) if state else None
        subtasks.append(
            {
                "id": s.id,
                "title": s.title,
                "difficulty": s.difficulty,
                "status": record.get("status") or ("failed" if why else "not run"),
                "role": record.get("role"),
                "latency_s": record.get("latency_s"),
                "reason": why,
            }
        )
    final = directory / "final.md"
    info = {
        "id": directory.name,
        "status": None if state is None else state.status,
        "error": None if state is None else state.error,
        "started": None if state is None else state.started,
        "totals": None if state is None else getattr(state, "totals", None),
        "goal": None if plan is None else plan.goal,
        "decisions": [] if plan is None else list(plan.decisions),
        "subtasks": subtasks,
        "result": str(final) if final.exists() else None,
        "directory": str(directory),
    }
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    started = None if state is None else state.started
    print(f"session {info['id']}  {info['status']}  started {_when(started)}")
    if info["error"]:
        print(f"  error: {info['error']}")
    if plan is not None:
        print(f"  goal: {plan.goal}")
        for d in plan.decisions:
            print(f"  decision: {d}")
    for t in subtasks:
        took = "" if t["latency_s"] is None else f" {t['latency_s']} s"
        print(
            f"  {t['id']} [{t['difficulty']}] {t['status']}"
            f"{' on ' + t['role'] if t['role'] else ''}{took}: {t['title']}"
            + (f" -- {t['reason']}" if t["reason"] else "")
        )
    print(f"  result: {info['result'] or '(none yet)'}")
    print(f"  directory: {info['directory']}")
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
