"""Examples at the end of every command's ``--help`` (an ``examples:`` epilog).

Commands whose parser already writes its own examples (``run``, ``sessions``, ``mcp``,
``batch``, ``completion``) keep them; every other command and subcommand gets its lines
from ``EXAMPLES`` when the parser is built (``add_examples``), so the examples live in one
place and each command module stays as it is. An example line is two spaces then
``familiar <that command>``; a line indented deeper continues the one above; a blank line
ends the examples (notes may follow).
"""

from __future__ import annotations

import argparse
import textwrap

EXAMPLES: dict[str, tuple[str, ...]] = {
    "config": (
        "familiar config show",
        "familiar config use standard",
        "familiar config validate",
    ),
    "config show": (
        "familiar config show",
        "familiar config show --json",
        "familiar config show --slots ~/fleet/slots.toml",
    ),
    "config use": (
        "familiar config use minimal",
        "familiar config use 'naughty x kindergarten x translator'",
    ),
    "config validate": (
        "familiar config validate",
        "familiar config validate --slots ~/fleet/slots.toml",
    ),
    "local": (
        "familiar local up",
        "familiar local status",
        "familiar local down",
    ),
    "local up": (
        "familiar local up",
        "familiar local up --seats 2 --threads 1",
        "familiar local up --cache-ram 0      # no host prompt cache",
    ),
    "local down": ("familiar local down",),
    "local status": (
        "familiar local status",
        "familiar local status --json",
    ),
    "local logs": (
        "familiar local logs",
        "familiar local logs -n 200",
    ),
    "telemetry": (
        "familiar telemetry status",
        "familiar telemetry flush",
    ),
    "telemetry status": (
        "familiar telemetry status",
        "familiar telemetry status --json",
    ),
    "telemetry flush": (
        "familiar telemetry flush",
        "familiar telemetry flush --json",
    ),
    "translate": (
        "familiar translate articles/ --to en --out en/",
        "familiar translate notes.md --from ja --to en --in-place",
        "familiar translate articles/ --to en --out en/ --nats nats://HOST:4222",
    ),
    "fleet": (
        "familiar fleet",
        "familiar fleet --all          # also deployments of finished processes",
        "familiar fleet --json",
    ),
    "worker": (
        "familiar worker --nats nats://HOST:4222",
        "familiar worker --nats nats://HOST:4222 --jobs 4",
    ),
    "health": (
        "familiar health",
        "familiar health --json",
        "familiar health --watch 60",
    ),
    "bench": (
        "familiar bench naughty --concurrency 1,2,4,8,16",
        "familiar bench translator --rate 1,2,inf --requests 64   # open loop, Poisson",
        "familiar bench --list",
    ),
}

_INDENT = "  "


class ExamplesFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' lines as written (indented lines) and wraps each long plain
    line of a description or note to the terminal's width."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for line in text.splitlines():
            if line.startswith(" ") or len(indent + line) <= width:
                out.append(indent + line)
            else:
                out.append(
                    textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                )
        return "\n".join(out)


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command and subcommand's parser, by its name ("config show")."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    out[" ".join((*path, name))] = child
                    walk(child, (*path, name))

    walk(parser, ())
    return out


def example_lines(epilog: str | None) -> list[str]:
    """The example commands of an epilog (continuation lines joined to theirs)."""
    lines = (epilog or "").splitlines()
    if "examples:" not in lines:
        return []
    out: list[str] = []
    for line in lines[lines.index("examples:") + 1 :]:
        if not line.strip():
            break
        if line.startswith(_INDENT + " ") and out:
            out[-1] += " " + line.strip()
        else:
            out.append(line.strip())
    return out


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Give each command without examples of its own the ones in ``EXAMPLES``."""
    for name, child in commands(parser).items():
        if example_lines(child.epilog) or name not in EXAMPLES:
            continue
        text = "examples:\n" + "".join(f"{_INDENT}{line}\n" for line in EXAMPLES[name])
        child.epilog = text + ("\n" + child.epilog if child.epilog else "")
        child.formatter_class = ExamplesFormatter
