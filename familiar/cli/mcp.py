"""``familiar mcp``: serve the fleet as MCP tools on stdio (thin: parse, call)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from familiar.errors import ConfigError


def add_mcp_command(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "mcp",
        help="serve the fleet as MCP tools on stdio (for Claude Code and other agents)",
        description="Serve familiar's tools over the Model Context Protocol on stdio: "
        "fleet_status, ask, ask_many, run_session, session. The workspace, role "
        "configuration and slots are found exactly as for the other commands. Only "
        "JSON-RPC goes to stdout; logs go to stderr.",
        epilog="examples:\n"
        "  familiar mcp --print-config          # the `claude mcp add` line and a .mcp.json entry\n"
        "  familiar mcp --workspace ~/project   # serve that workspace's fleet on stdio\n"
        "\nregistered with Claude Code:\n"
        "  claude mcp add familiar -- familiar mcp --workspace ~/project\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the `claude mcp add` line and a .mcp.json entry for this workspace",
    )
    p.set_defaults(func=cmd_mcp)


def cmd_mcp(args: argparse.Namespace) -> int:
    from familiar.config.workspace import find_workspace

    workspace = find_workspace(args.workspace)
    try:
        import mcp.server.mcpserver  # noqa: F401 - the SDK is an optional extra

        from familiar.mcp import server, tools
    except ImportError:
        raise ConfigError(
            "familiar mcp needs the MCP SDK (version 2 or later): pip install 'familiar[mcp]'"
        ) from None
    where = tools.Where(workspace, args.slots)
    if args.print_config:
        print(server.print_config(where))
        return 0
    server.serve(workspace, args.slots)
    return 0
