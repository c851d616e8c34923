"""``familiar run`` and ``familiar sessions``: agent sessions from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
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


def add_run_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    run = sub.add_parser(
        "run",
        help="run an agent session: plan, fan out to workers, integrate, translate",
        description="Run TASK as an agent session. The planner (grandpa, else the strongest "
        "worker) splits it into subtasks with pinned decisions; code routes hard subtasks "
        "to naughty and easy ones to kindergarten; the planner merges the results. "
        "Exit codes: 0 done, 1 the session failed, 2 usage or configuration error.",
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
        "--out", type=Path, metavar="DIR", help="also write the result to DIR/result.md"
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
    if args.task and args.task_file:
        raise ConfigError("give the task as text or with --task-file, not both")
    if args.task_file:
        try:
            text: str = args.task_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --task-file {args.task_file}: {exc}") from None
    else:
        text = args.task or ""
    if not text.strip():
        raise ConfigError('no task given: familiar run "TASK" (or --task-file FILE)')
    return text


def _prepare(args: argparse.Namespace) -> tuple[Config, Path, str]:
    from familiar.session import check_resumable, check_runnable, create_session_dir

    if not 1 <= args.max_subtasks <= 8:
        raise ConfigError("--max-subtasks must be between 1 and 8")
    if args.resume:
        if args.task or args.task_file:
            raise ConfigError("--resume continues a recorded task; do not give a new one")
        home = state_home(find_workspace(args.workspace))
        directory = home / "sessions" / args.resume
        if not (directory / "task.md").is_file():
            raise ConfigError(f"no session {args.resume!r} under {home / 'sessions'}")
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
        return cfg, directory, args.resume
    task = _task(args)
    cfg = load_config(args.workspace, args.slots, args.roles)
    check_runnable(cfg, detect_lang(task), args.lang)
    sid = new_correlation_id()
    return cfg, create_session_dir(cfg, task, sid), sid


def cmd_run(args: argparse.Namespace) -> int:
    cfg, directory, sid = _prepare(args)
    print(f"session {sid}  ({directory})", file=sys.stderr)
    outcome = signals.run(_run(cfg, directory, sid, args))
    if args.out:
        try:
            write_text_atomic(args.out / "result.md", outcome.final or "")
        except OSError as exc:
            raise StateError(
                f"session {sid} is done (its result is in {directory / 'final.md'}) but"
                f" --out {args.out / 'result.md'} cannot be written: {exc.strerror or exc}"
            ) from None
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
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        print(outcome.final)
    return 0


async def _run(cfg: Config, directory: Path, sid: str, args: argparse.Namespace) -> Any:
    from familiar.fleet import Fleet
    from familiar.ledger import make_ledger
    from familiar.session import Session
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
            view: Any
            if sys.stderr.isatty() and not args.json:
                view = stack.enter_context(LiveView(lambda: _seat_statistics(fleet)))
            else:
                view = PlainView()
            session = Session(
                cfg,
                fleet,
                directory,
                view=view,
                lang=args.lang,
                max_subtasks=args.max_subtasks,
                telemetry=telemetry,
            )
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
