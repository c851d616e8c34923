"""The command line: parse, load config, run, map errors to exit codes.

Exit codes: 0 success, 1 a run failed, 2 a usage or configuration mistake,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM, handled like Ctrl-C). Errors are
one line on stderr, never a traceback (set ``FAMILIAR_DEBUG=1`` to see one); usage
mistakes too (``_Parser.error``).

Global options (``--log-level``, ``-v``, ``-q``) are accepted before or after the
command: ``_add_global_options`` gives every command's parser its own copy, and ``_level``
reads them together (``-v run -v`` is ``-vv``; the last ``--log-level`` wins). Everything
past argparse is imported when a command runs, so ``--version`` and ``--help`` stay fast
(no HTTP stack, no structlog); ``familiar --version`` does not even build the parser.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from familiar import __version__
from familiar.errors import FamiliarError, Terminated
from familiar.logs import LEVELS

if TYPE_CHECKING:
    from familiar.config.workspace import Config

Command = Callable[[argparse.Namespace], int]

#: every environment variable familiar reads, for ``familiar --help``
#: (tests/unit/test_cli_conventions.py checks that the code reads no other FAMILIAR_*)
ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("FAMILIAR_HOME", "state: sessions, caches, telemetry spill (default <workspace>/.familiar)"),
    ("FAMILIAR_SLOTS", "slots file when --slots is not given (default <workspace>/slots.toml)"),
    ("FAMILIAR_TELEMETRY", "off (or 0, false, no): no telemetry sent, no spill file"),
    ("FAMILIAR_HEARTBEAT_S", "seconds between progress heartbeats without a terminal (30)"),
    ("FAMILIAR_TELEMETRY_URL", "where events go (default http://127.0.0.1:8687/telemetry)"),
    ("FAMILIAR_LEDGER_DIR", "the host seat ledger's directory (default $XDG_RUNTIME_DIR/familiar)"),
    ("FAMILIAR_NATS_URL", "share seats through NATS JetStream instead of the host ledger"),
    ("FAMILIAR_NATS_CREDS", "NATS: a .creds file (user JWT + nkey seed; needs nkeys)"),
    ("FAMILIAR_NATS_NKEY", "NATS: an nkey seed file (needs the nkeys package)"),
    ("FAMILIAR_NATS_CA", "NATS TLS: the CA that signed the server's certificate"),
    ("FAMILIAR_NATS_CERT", "NATS TLS: a client certificate (key inside, or ..._CERT_KEY)"),
    ("FAMILIAR_NATS_CERT_KEY", "NATS TLS: the client certificate's key file"),
    ("FAMILIAR_FLEET_KEY", "shared secret signing results, chunks and seats on NATS"),
    ("FAMILIAR_FLEET_KEY_FILE", "a file holding FAMILIAR_FLEET_KEY"),
    ("FAMILIAR_LOG_LEVEL", "log level without --log-level, -v or -q (default warning)"),
    ("FAMILIAR_LOG_JSON", "1: log lines as JSON"),
    ("FAMILIAR_DEBUG", "set: a traceback instead of the one-line error"),
    ("NO_COLOR", "set: no colour in log lines (FORCE_COLOR=1 forces colour)"),
)


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage mistakes are one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            import difflib

            choices = re.findall(r"'([^']*)'", found.group(2))
            close = difflib.get_close_matches(found.group(1), choices, n=1, cutoff=0.6)
            if close:
                message = f"unknown choice {found.group(1)!r}: did you mean {close[0]!r}?"
        self.exit(2, f"familiar: error: {message} (see '{self.prog} --help')\n")


def _log_level(text: str) -> str:
    if text.strip().lower() not in LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LEVELS)}")
    return text.strip().lower()


def _global_options(p: argparse.ArgumentParser, depth: int) -> None:
    """--log-level, -v, -q on ``p``, a parser ``depth`` commands down. Each depth has its own
    destinations (``verbose``, ``verbose_1``, ...), absent unless given: argparse parses a
    command into a fresh namespace and copies it over the outer one, so shared names would let
    ``familiar -v run -v`` count one -v instead of two (``_level`` adds them up)."""
    taken = set(p._option_string_actions)  # a command that defines -v/-q itself keeps them
    suffix = f"_{depth}" if depth else ""
    default: Any = argparse.SUPPRESS if depth else None
    if "--log-level" not in taken:
        p.add_argument(
            "--log-level",
            dest=f"log_level{suffix}",
            type=_log_level,
            default=default,
            metavar="LEVEL",
            help="debug, info, warning (default), error; wins over -v/-q",
        )
    if not {"-v", "--verbose"} & taken:
        p.add_argument(
            "-v",
            "--verbose",
            dest=f"verbose{suffix}",
            action="count",
            default=default,
            help="more log lines: -v info, -vv debug",
        )
    if not {"-q", "--quiet"} & taken:
        p.add_argument(
            "-q",
            "--quiet",
            dest=f"quiet{suffix}",
            action="count",
            default=default,
            help="fewer log lines: errors only",
        )


def _add_global_options(parser: argparse.ArgumentParser, depth: int = 1) -> None:
    """Give every command parser under ``parser`` the global options (after the command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():
                _global_options(sub, depth)
                _add_global_options(sub, depth + 1)


def _level(args: argparse.Namespace) -> str | None:
    """The log level the options ask for (None: ``FAMILIAR_LOG_LEVEL`` or the default):
    the last --log-level given, else warning moved one step per -q and back per -v."""

    def ours(name: str) -> list[Any]:  # outermost first
        found = {k: v for k, v in vars(args).items() if re.fullmatch(rf"{name}(_\d+)?", k)}
        return [found[k] for k in sorted(found, key=len) if found[k]]

    levels = ours("log_level")
    if levels:
        return str(levels[-1])
    shift = int(sum(ours("quiet")) - sum(ours("verbose")))
    if not shift:
        return None
    return LEVELS[max(0, min(len(LEVELS) - 1, LEVELS.index("warning") + shift))]


def _environment_help() -> str:
    width = max(len(name) for name, _ in ENVIRONMENT)
    lines = [f"  {name:<{width}}  {text}" for name, text in ENVIRONMENT]
    return (
        "environment:\n" + "\n".join(lines) + "\n\n"
        "exit codes: 0 done, 1 the work failed, 2 a usage or configuration mistake,\n"
        "  130 interrupted (Ctrl-C), 143 terminated (SIGTERM)"
    )


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


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from familiar.cli.local import local_command
    from familiar.config.roles import PRESETS

    parser = _Parser(
        prog="familiar",
        description="Orchestrate a self-hosted LLM fleet: agent sessions, role "
        "configurations, translation batches. Options --log-level, -v and -q are "
        "accepted before or after the command.",
        epilog=_environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"familiar {__version__}")
    _global_options(parser, 0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cfg = sub.add_parser("config", help="show, switch or validate the role configuration")
    cfg_sub = cfg.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = cfg_sub.add_parser("show", help="active roles -> slots -> URLs, model, parallel")
    _common(show)
    show.add_argument(
        "--json", action="store_true", help="print the configuration as JSON on stdout"
    )
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
                help="CPU threads (default: 1 on a host of 2 or fewer CPUs, where more"
                " collapse when another process is busy; else all usable CPUs)",
            )
            p.add_argument(
                "--cache-ram",
                type=_non_negative,
                default=None,
                metavar="MIB",
                help="llama-server's host prompt cache in MiB (default 256; 0: none)",
            )
        if name == "logs":
            p.add_argument("-n", "--lines", type=int, default=50, help="lines (default 50)")
        if name == "status":
            p.add_argument(
                "--json",
                action="store_true",
                help='print the status as JSON on stdout ({"running": false} when stopped)',
            )
        p.set_defaults(func=local_command(name))

    from familiar.cli.batch import add_batch_command
    from familiar.cli.examples import add_examples
    from familiar.cli.fleet import add_fleet_command
    from familiar.cli.fleetcheck import add_fleetcheck_commands
    from familiar.cli.mcp import add_mcp_command
    from familiar.cli.run import add_run_commands
    from familiar.cli.translate import add_translate_command
    from familiar.cli.worker import add_worker_command

    add_run_commands(sub, _common)
    add_translate_command(sub, _common)
    add_fleet_command(sub, _common)
    add_worker_command(sub, _common)
    add_fleetcheck_commands(sub, _common)
    add_mcp_command(sub, _common)
    add_batch_command(sub, _common)
    comp = sub.add_parser(
        "completion",
        help="print the shell completion script (bash, zsh or fish)",
        description="Print a script that completes familiar's commands and options.",
        epilog="examples:\n"
        "  familiar completion bash > ~/.local/share/bash-completion/completions/familiar\n"
        "  familiar completion fish > ~/.config/fish/completions/familiar.fish\n"
        "  familiar completion zsh > ~/.familiar-completion.zsh\n"
        "\nor load it at every start of the shell (in ~/.bashrc; zsh alike):\n"
        '  eval "$(familiar completion bash)"\n',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    comp.add_argument("shell", choices=("bash", "zsh", "fish"))
    comp.set_defaults(func=cmd_completion)
    _add_global_options(parser)
    add_examples(parser)
    return parser


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    print(argcomplete.shellcode(["familiar"], shell=args.shell))
    return 0


def _asks_version(argv: Sequence[str]) -> bool:
    """``--version`` among the options before the command: answered without building the
    parser (whose commands import pydantic models)."""
    for arg in argv:
        if arg == "--version":
            return True
        if not arg.startswith("-") or arg == "--" or arg.startswith("--log-level"):
            return False  # a command, or an option value follows: argparse decides
    return False


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _asks_version(argv):
        print(f"familiar {__version__}")
        return 0
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (familiar completion)
        import argcomplete

        argcomplete.autocomplete(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage mistake (already printed)
        return 0 if done.code is None else done.code if isinstance(done.code, int) else 2
    func: Command = args.func
    try:
        from familiar import logs

        logs.configure(_level(args))
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
        from familiar.logs import mask

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
    from familiar.config.workspace import load_config

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
    from familiar.listing import print_table

    rows = info["assignments"]
    slots = {r["slot"] for r in rows}
    print(f"roles: {info['roles']} (from {info['source']})")
    print(f"workspace: {info['workspace']}")
    print(f"slots: {info['slots_file']}")
    print_table(
        ("role", "slot", "url", "model", "runtime", "parallel"),
        [
            (r["role"], r["slot"], ", ".join(r["url"]), r["model"], r["runtime"], r["parallel"])
            for r in rows
        ],
        totals=f"{len(rows)} role(s) on {len(slots)} slot(s)",
        fold=(2, 3),
    )
    return 0


def cmd_config_use(args: argparse.Namespace) -> int:
    from familiar.config import claude_md

    # validated with the workspace's roles, slots and role files before touching anything
    cfg = load(args, roles=args.role_string)
    canonical = cfg.role_config.canonical()
    claude_md.write_role_line(cfg.claude_md, canonical)
    print(f"{cfg.claude_md}: familiar: {canonical}")
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    from familiar.fleet import parallel_conflicts

    cfg = load(args)
    for warning in parallel_conflicts(cfg.active_slots):
        print(f"familiar: warning: {warning}", file=sys.stderr)
    print(f"ok: {cfg.role_config.canonical()} ({len(cfg.active_slots)} slot(s), {cfg.slots_file})")
    return 0
