"""The command line: parse, load config, run, map errors to exit codes.

Exit codes: 0 success, 1 a run failed, 2 a usage or configuration mistake,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM, handled like Ctrl-C). Errors are
one line on stderr, never a traceback (set ``FAMILIAR_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from familiar import __version__, claude_md, signals
from familiar.config import Config, load_config
from familiar.errors import FamiliarError, Terminated
from familiar.logs import mask
from familiar.roles import PRESETS, parse_role_string

Command = Callable[[argparse.Namespace], int]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workspace",
        type=Path,
        metavar="DIR",
        help="workspace directory (default: nearest CLAUDE.md upward, else cwd)",
    )
    p.add_argument(
        "--slots",
        type=Path,
        metavar="PATH",
        help="slots file (default: $FAMILIAR_SLOTS, <workspace>/slots.toml, shipped)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="familiar",
        description="Orchestrate a self-hosted LLM fleet: agent sessions, role "
        "configurations, translation batches.",
    )
    parser.add_argument("--version", action="version", version=f"familiar {__version__}")
    parser.add_argument(
        "--log-level", default=None, metavar="LEVEL", help="debug, info, warning (default), error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cfg = sub.add_parser("config", help="show, switch or validate the role configuration")
    cfg_sub = cfg.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = cfg_sub.add_parser("show", help="active roles -> slots -> URLs, model, parallel")
    _common(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_config_show)
    use = cfg_sub.add_parser(
        "use",
        help="validate and write a role string to CLAUDE.md",
        description="Presets: " + "; ".join(f"{k} = {v}" for k, v in PRESETS.items()),
    )
    _common(use)
    use.add_argument(
        "role_string",
        help="a preset (full, standard, minimal) or e.g. 'naughty x kindergarten x translator'",
    )
    use.set_defaults(func=cmd_config_use)
    val = cfg_sub.add_parser("validate", help="check the role string, role files and slots file")
    _common(val)
    val.set_defaults(func=cmd_config_validate)

    local = sub.add_parser("local", help="the embedded llama-server (Gemma 3 270M)")
    local_sub = local.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, helptext in (
        ("up", "start it (or reuse the running one) and leave it running"),
        ("down", "stop it"),
        ("status", "address, model, seats, pid"),
        ("logs", "the last lines of its log"),
    ):
        p = local_sub.add_parser(name, help=helptext)
        _common(p)
        if name == "up":
            p.add_argument("--seats", type=_positive, default=4, help="parallel seats (default 4)")
            p.add_argument(
                "--threads",
                type=_positive,
                default=None,
                help="CPU threads (default: all usable CPUs; fewer on a busy host)",
            )
        if name == "logs":
            p.add_argument("-n", "--lines", type=int, default=50, help="lines (default 50)")
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=_local_cmd(name))

    from familiar.cli_fleet import add_fleet_command
    from familiar.cli_run import add_run_commands
    from familiar.cli_translate import add_translate_command

    add_run_commands(sub, _common)
    add_translate_command(sub, _common)
    add_fleet_command(sub, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from familiar import logs

    logs.configure(args.log_level)
    func: Command = args.func
    try:
        return func(args)
    except Terminated:
        print("familiar: terminated", file=sys.stderr)
        return Terminated.exit_code
    except KeyboardInterrupt:
        print("familiar: interrupted", file=sys.stderr)
        return 130
    except FamiliarError as exc:
        if os.environ.get("FAMILIAR_DEBUG"):
            raise
        print(f"familiar: error: {mask(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # the reader went away (`| head`): not a mistake of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error while flushing at exit
        return 141  # what a shell reports for a process ended by SIGPIPE
    except OSError as exc:  # a file familiar needs could not be read or written
        if os.environ.get("FAMILIAR_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"familiar: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


def load(args: argparse.Namespace, roles: str | None = None) -> Config:
    return load_config(workspace=args.workspace, slots=args.slots, roles=roles)


# -- config -----------------------------------------------------------------------------


def _describe(cfg: Config) -> dict[str, Any]:
    rows = []
    for a in cfg.role_config.assignments:
        name = cfg.slot_name(a.role, a.slot)
        slot = cfg.slots[name]
        rows.append(
            {
                "role": a.role,
                "slot": name,
                "url": slot.public()["url"],
                "model": slot.model,
                "runtime": slot.runtime,
                "parallel": slot.parallel,
                "reserve": slot.reserve,
            }
        )
    return {
        "roles": cfg.role_config.canonical(),
        "source": cfg.role_source,
        "workspace": str(cfg.workspace),
        "slots_file": str(cfg.slots_file),
        "home": str(cfg.home),
        "assignments": rows,
    }


def cmd_config_show(args: argparse.Namespace) -> int:
    info = _describe(load(args))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]roles[/]: {info['roles']}  [dim](from {info['source']})[/]")
    console.print(f"[dim]workspace {info['workspace']}; slots {info['slots_file']}[/]")
    table = Table("role", "slot", "url", "model", "runtime", "parallel")
    for r in info["assignments"]:
        table.add_row(
            r["role"], r["slot"], ", ".join(r["url"]), r["model"], r["runtime"], str(r["parallel"])
        )
    console.print(table)
    return 0


def cmd_config_use(args: argparse.Namespace) -> int:
    parsed = parse_role_string(args.role_string)  # validate before touching anything
    cfg = load(args, roles=parsed.canonical())  # the slots and role files must fit too
    claude_md.write_role_line(cfg.claude_md, parsed.canonical())
    print(f"{cfg.claude_md}: familiar: {parsed.canonical()}")
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    from familiar.fleet import parallel_conflicts

    cfg = load(args)
    for warning in parallel_conflicts(cfg.active_slots):
        print(f"familiar: warning: {warning}", file=sys.stderr)
    print(f"ok: {cfg.role_config.canonical()} ({len(cfg.active_slots)} slot(s), {cfg.slots_file})")
    return 0


# -- local ------------------------------------------------------------------------------


def _local_cmd(action: str) -> Command:
    def run(args: argparse.Namespace) -> int:
        from familiar.config import find_workspace, state_home
        from familiar.local import LocalServer

        home = state_home(find_workspace(args.workspace))
        server = LocalServer(
            home, seats=getattr(args, "seats", 4), threads=getattr(args, "threads", None)
        )
        if action == "up":
            info = signals.run(server.ensure_running())
            print(
                f"llama-server up at {info.address} (model {info.model_name}, "
                f"{info.seats} seats, pid {info.pid})"
            )
        elif action == "down":
            stopped = signals.run(server.stop())
            print("stopped" if stopped else "not running")
        elif action == "status":
            st = server.status()
            if st is None:
                print("not running")
                return 1
            if getattr(args, "json", False):
                print(
                    json.dumps(
                        {
                            "address": st.address,
                            "model": st.model_name,
                            "model_path": str(st.model),
                            "seats": st.seats,
                            "pid": st.pid,
                        }
                    )
                )
            else:
                print(f"{st.address}  model {st.model_name}  seats {st.seats}  pid {st.pid}")
        else:
            for line in server.log_tail(args.lines):
                print(line)
        return 0

    return run
