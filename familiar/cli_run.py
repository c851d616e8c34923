"""``familiar run`` and ``familiar sessions``: agent sessions from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from familiar import signals
from familiar.config import find_workspace, state_home

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

    sessions = sub.add_parser("sessions", help="list sessions with status and timings")
    common(sessions)
    sessions.add_argument(
        "--json", action="store_true", help="print the sessions as a JSON array on stdout"
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
        from familiar.view import LiveView, PlainView

        if sys.stderr.isatty() and not args.json:
            return LiveView(lambda: service.seat_statistics(fleet))
        return nullcontext(PlainView())

    outcome = signals.run(service.run_session(prepared, req, view=view, notice=_notice))
    applied = service.deliver(prepared, req, outcome, _notice)
    if outcome.check:
        _notice(outcome.check)
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
    it, the task too; a last word that is no path is the task."""
    if args.task or args.task_file or args.resume or not args.context:
        return
    last = args.context[-1]
    if (
        not Path(last).exists()
        and not set("*?[") & set(last)
        and (" " in last or len(args.context) > 1)
    ):
        args.task = args.context.pop()


def _notice(line: str) -> None:
    print(line, file=sys.stderr)


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
