"""The MCP server: familiar's tools, each with a JSON schema and a description a model
can act on. Only JSON-RPC goes to stdout; logs go to stderr. Every failure is an MCP
tool error carrying the one line the CLI would print; the server keeps serving. A call
the client cancels is cancelled here too: its requests stop and their seats are freed.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from familiar.errors import FamiliarError
from familiar.logs import mask
from familiar.mcp import tools
from familiar.mcp.tools import Where

T = TypeVar("T")

INSTRUCTIONS = (
    "familiar hands work to the user's own LLM fleet (self-hosted vLLM, llama.cpp, SGLang,"
    " Ollama servers) under each deployment's seat cap. Use ask/ask_many for prompts you"
    " want answered by a fleet model (ask_many for batches: it fans out in parallel),"
    " run_session for a planned multi-agent task on the workspace (optionally with the"
    " user's check command), fleet_status to see roles, slots and seats, session to read"
    " a finished session."
)


def build(where: Where) -> MCPServer[Any]:
    """The MCPServer with familiar's tools, for the workspace and slots in ``where``."""
    from familiar import __version__

    @asynccontextmanager
    async def lifespan(_app: MCPServer[Any]) -> AsyncIterator[None]:
        try:
            yield None
        finally:
            await where.fleets.aclose()

    app: MCPServer[Any] = MCPServer(
        "familiar", instructions=INSTRUCTIONS, version=__version__, lifespan=lifespan
    )

    async def guarded(work: Awaitable[T]) -> T:
        try:
            return await work
        except FamiliarError as exc:
            raise ToolError(
                mask(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
            ) from None

    def reporter(ctx: Context) -> tools.Progress:
        async def report(progress: float, total: float | None, message: str) -> None:
            await ctx.report_progress(progress, total, message)

        return report

    @app.tool()
    async def fleet_status() -> dict[str, Any]:
        """The active roles, the slot each is bound to (URLs, model, runtime, parallel),
        and each deployment's seats in use / cap and waiters across every familiar
        process (the seat ledger)."""
        return await guarded(tools.fleet_status(where))

    @app.tool()
    async def ask(
        prompt: Annotated[str, Field(description="the prompt (a user message)", min_length=1)],
        role: Annotated[
            str | None,
            Field(
                description="an active role, e.g. naughty or translator (fleet_status lists"
                " them; default: the planner role)"
            ),
        ] = None,
        slot: Annotated[str | None, Field(description="a slot name instead of a role")] = None,
        system: Annotated[str | None, Field(description="an optional system prompt")] = None,
        json_schema: Annotated[
            dict[str, Any] | None,
            Field(
                description="a JSON schema the answer must follow (constrained decoding "
                "where the runtime supports it); the parsed answer comes back as 'json'"
            ),
        ] = None,
        max_tokens: Annotated[int | None, Field(ge=1)] = None,
        temperature: Annotated[float | None, Field(ge=0, le=2)] = None,
    ) -> dict[str, Any]:
        """One prompt to a fleet model. Returns the answer text, finish reason and token
        usage; an answer cut at max_tokens, empty or unfinished is an error, never a
        result."""
        (answer,) = await guarded(
            tools.ask(
                where,
                [prompt],
                role=role,
                slot=slot,
                system=system,
                json_schema=json_schema,
                max_tokens=max_tokens,
                temperature=temperature,
            )
        )
        if answer["status"] != "ok":
            raise ToolError(answer["error"])
        return answer

    @app.tool()
    async def ask_many(
        prompts: Annotated[
            list[str],
            Field(
                description=f"the prompts, at most {tools.MAX_PROMPTS}",
                min_length=1,
                max_length=tools.MAX_PROMPTS,
            ),
        ],
        ctx: Context,
        role: Annotated[str | None, Field(description="a role (default: the planner role)")] = None,
        slot: Annotated[str | None, Field(description="a slot name instead of a role")] = None,
        system: Annotated[str | None, Field(description="a system prompt for every prompt")] = None,
        json_schema: Annotated[dict[str, Any] | None, Field(description="a JSON schema")] = None,
        max_tokens: Annotated[int | None, Field(ge=1)] = None,
        temperature: Annotated[float | None, Field(ge=0, le=2)] = None,
    ) -> dict[str, Any]:
        """Many prompts to one fleet model at once, fanned out in parallel under the
        deployment's seat cap. Answers come back in the prompts' order, each with its
        own status ("ok" with text and usage, or "error" with the reason): one failure
        does not fail the others. Progress is reported as answers arrive."""
        answers = await guarded(
            tools.ask(
                where,
                prompts,
                role=role,
                slot=slot,
                system=system,
                json_schema=json_schema,
                max_tokens=max_tokens,
                temperature=temperature,
                progress=reporter(ctx),
            )
        )
        return {"answers": answers, "ok": sum(a["status"] == "ok" for a in answers)}

    @app.tool()
    async def run_session(
        task: Annotated[str, Field(description="what the team should do", min_length=1)],
        ctx: Context,
        context: Annotated[
            list[str],
            Field(
                description="workspace files, directories or globs the session sees "
                "(relative to the workspace)"
            ),
        ] = [],  # noqa: B006 - a schema default, never mutated
        check: Annotated[
            str | None,
            Field(
                description="the user's own command that judges the files the session "
                "writes (e.g. 'python -m pytest -q'); only pass a command the user gave"
            ),
        ] = None,
        check_timeout_s: Annotated[float, Field(gt=0, le=86400)] = 600.0,
        roles: Annotated[str | None, Field(description="a role string for this run")] = None,
        lang: Annotated[str | None, Field(description="'en' or 'ja' for the result")] = None,
        out: Annotated[
            str | None, Field(description="a directory for result.md and the files written")
        ] = None,
    ) -> dict[str, Any]:
        """A planned multi-agent session on the user's fleet, as `familiar run` runs it:
        the planner splits the task, workers do the subtasks (seeing only the context
        files each needs), the planner integrates. Returns the session id, status, the
        result (long results cut, with the path of the whole) and the files written.
        Progress is reported at least every few seconds."""
        return await guarded(
            tools.run_session(
                where,
                task,
                context=context,
                check=check,
                check_timeout_s=check_timeout_s,
                roles=roles,
                lang=lang,
                out=out,
                progress=reporter(ctx),
            )
        )

    @app.tool()
    async def translate(
        paths: Annotated[
            list[str],
            Field(
                description="Markdown files or directories (relative to the workspace)",
                min_length=1,
            ),
        ],
        to: Annotated[str, Field(description="target language: 'en' or 'ja'")],
        ctx: Context,
        out: Annotated[
            str | None,
            Field(description="output directory (default: translated-<to>); never a source"),
        ] = None,
        source: Annotated[str, Field(description="'auto', 'en' or 'ja'")] = "auto",
    ) -> dict[str, Any]:
        """Translate Markdown articles (Japanese <-> English) with the translator role,
        as `familiar translate` does: code, URLs, link targets and structure kept byte
        for byte, chunks cached, sources never overwritten. Returns the per-article
        report (status, chunks, output path, error) and the exit code (0 all ok)."""
        return await guarded(
            tools.translate(where, paths, to, out=out, source=source, progress=reporter(ctx))
        )

    @app.tool()
    async def session(
        id: Annotated[str, Field(description="a session id, a unique prefix, or 'last'")],
    ) -> dict[str, Any]:
        """A session's status, plan, subtasks and result, by id."""
        return await guarded(_sync(lambda: tools.session(where, id)))

    return app


async def _sync(fn: Callable[[], T]) -> T:
    return fn()


def print_config(where: Where) -> str:
    """The ``claude mcp add`` line and a ``.mcp.json`` entry for this workspace."""
    argv = [sys.executable, "-m", "familiar", "mcp"]
    if where.workspace is not None:
        argv += ["--workspace", str(where.workspace)]
    if where.slots is not None:
        argv += ["--slots", str(where.slots)]
    entry = {"mcpServers": {"familiar": {"command": argv[0], "args": argv[1:]}}}
    return (
        f"claude mcp add familiar -- {shlex.join(argv)}\n\n"
        f"# or in the project's .mcp.json:\n{json.dumps(entry, indent=2)}"
    )


def serve(workspace: Path | None, slots: Path | None) -> None:
    """Run the server on stdio until the client goes away."""
    build(Where(workspace, slots)).run("stdio")
