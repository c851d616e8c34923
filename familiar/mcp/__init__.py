"""``familiar mcp``: the fleet as tools for a coding agent (Claude Code and any MCP
client), over stdio, with the official ``mcp`` SDK (``pip install 'familiar[mcp]'``).

:mod:`.tools` does the work over the same services the CLI uses; :mod:`.server`
registers the tools, maps errors to MCP tool errors, and runs the stdio transport.
"""
