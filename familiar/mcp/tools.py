"""What the MCP tools do, over the same services the CLI uses (house rule 17): the
configuration, the fleet and its seat ledger, the session service, the session store.

Each function takes plain arguments, returns JSON-able data, and raises the familiar
error tree; :mod:`familiar.mcp.server` turns those errors into MCP tool errors carrying
the one line the CLI would print.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from familiar.client.backend import CallResult, SlotClient
from familiar.config.workspace import Config, find_workspace, load_config, state_home
from familiar.errors import ConfigError, FamiliarError
from familiar.plan import Plan

if TYPE_CHECKING:
    from familiar.fleet import Fleet

#: answers longer than this are cut for the agent, with the path of the whole
RESULT_CHARS = 20_000
MAX_PROMPTS = 64

Progress = Callable[[float, float | None, str], Awaitable[None]]


class Fleets:
    """Clients kept open between tool calls: one fleet per slot as configured (a changed
    slots file makes a new one), closed when the server stops. A call then costs what
    the request costs, not a new HTTP client and ledger each time."""

    def __init__(self) -> None:
        self._open: dict[str, Fleet] = {}
        self._lock = asyncio.Lock()

    async def client(self, cfg: Config, name: str) -> SlotClient:
        from familiar.fleet import Fleet
        from familiar.ledger import make_ledger

        slot = cfg.slots[name]
        key = json.dumps(
            [slot.model_dump(mode="json"), cfg.fleet.model_dump(mode="json"), str(cfg.home)],
            sort_keys=True,
        )
        async with self._lock:
            fleet = self._open.get(key)
            if fleet is None:
                fleet = Fleet({name: slot}, home=cfg.home, ledger=make_ledger(cfg.fleet))
                await fleet.__aenter__()
                self._open[key] = fleet
        return fleet[name]

    async def aclose(self) -> None:
        async with self._lock:
            fleets, self._open = list(self._open.values()), {}
        for fleet in fleets:
            await fleet.__aexit__(None, None, None)


@dataclass
class Where:
    """The workspace and slots file the server was started with (as for the CLI), and
    the clients it keeps open."""

    workspace: Path | None = None
    slots: Path | None = None
    fleets: Fleets = field(default_factory=Fleets)

    def config(self, roles: str | None = None) -> Config:
        return load_config(self.workspace, self.slots, roles)


def _slot_for(cfg: Config, role: str | None, slot: str | None) -> str:
    """The slot a prompt goes to: the one named, else the role's, else the planner's."""
    if role and slot:
        raise ConfigError("give a role or a slot, not both")
    if slot:
        if slot not in cfg.slots:
            known = ", ".join(sorted(cfg.slots))
            raise ConfigError(f"unknown slot {slot!r} (slots: {known})")
        return slot
    if role is None:
        from familiar.routing import planner_role

        role = planner_role(cfg)
    if role not in cfg.role_config.roles:
        active = ", ".join(cfg.role_config.roles)
        raise ConfigError(f"role {role!r} is not active (active roles: {active})")
    return cfg.slots_for(role)[0].name


def _answer(result: CallResult) -> dict[str, Any]:
    if result.finish_reason == "length":
        raise FamiliarError(
            f"the answer was cut off at max_tokens ({result.completion_tokens} tokens):"
            " raise max_tokens"
        )
    return {
        "status": "ok",
        "text": result.text,
        "finish_reason": result.finish_reason,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        },
        "slot": result.slot,
        "latency_s": round(result.latency_s, 3),
    }


async def _ask_one(
    client: SlotClient,
    prompt: str,
    system: str | None,
    json_schema: Mapping[str, Any] | None,
    max_tokens: int | None,
    temperature: float | None,
) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    params: dict[str, Any] = {}
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if temperature is not None:
        params["temperature"] = temperature
    schema = json_schema if json_schema and client.slot.supports_json_schema else None
    result = await client.chat(messages, role="mcp", json_schema=schema, **params)
    out = _answer(result)
    if json_schema:
        out["json"] = _parsed(result.text)
    return out


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise FamiliarError("the answer is not the JSON the schema asked for") from None


async def ask(
    where: Where,
    prompts: Sequence[str],
    *,
    role: str | None = None,
    slot: str | None = None,
    system: str | None = None,
    json_schema: Mapping[str, Any] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Every prompt to one slot, fanned out under its seats (the ledger's cap holds
    across processes); answers in order, each with its own status."""
    if not prompts:
        raise ConfigError("give at least one prompt")
    if len(prompts) > MAX_PROMPTS:
        raise ConfigError(f"at most {MAX_PROMPTS} prompts per call, got {len(prompts)}")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError("max_tokens must be a positive number")
    if json_schema is not None:
        import jsonschema

        try:
            jsonschema.validators.validator_for(json_schema).check_schema(dict(json_schema))
        except jsonschema.SchemaError as exc:
            raise ConfigError(f"json_schema is not a valid JSON Schema: {exc.message}") from None
    cfg = where.config()
    name = _slot_for(cfg, role, slot)
    client = await where.fleets.client(cfg, name)
    done = 0

    async def one(prompt: str) -> dict[str, Any]:
        nonlocal done
        try:
            return await _ask_one(client, prompt, system, json_schema, max_tokens, temperature)
        except FamiliarError as exc:
            return {"status": "error", "error": str(exc)}
        finally:
            done += 1
            if progress is not None:
                await progress(done, len(prompts), f"{done}/{len(prompts)} answered")

    return list(await asyncio.gather(*(one(p) for p in prompts)))


async def fleet_status(where: Where) -> dict[str, Any]:
    """Roles -> slots -> deployments, and seats in use / cap from the ledger."""
    from familiar.fleet import parallel_conflicts
    from familiar.ledger import deployment_id, make_ledger
    from familiar.logs import redact_url

    cfg = where.config()
    ledger = make_ledger(cfg.fleet)
    async with ledger:
        views = {v.id: v for v in await ledger.views()}
    roles = []
    for role in cfg.role_config.roles:
        for s in cfg.slots_for(role):
            dep = deployment_id(s.url, s.model)
            view = views.get(dep)
            roles.append(
                {
                    "role": role,
                    "slot": s.name,
                    "urls": [redact_url(u) for u in s.url],
                    "model": s.model,
                    "runtime": s.runtime,
                    "parallel": s.parallel,
                    "deployment": dep,
                    "seats_in_use": 0 if view is None else len(view.holders),
                    "seats_cap": s.parallel if view is None else view.cap,
                    "waiting": 0 if view is None else len(view.waiting),
                }
            )
    return {
        "workspace": str(cfg.workspace),
        "roles": cfg.role_config.canonical(),
        "slots": roles,
        "warnings": parallel_conflicts(cfg.active_slots),
    }


class _ProgressView:
    """A session view that reports to the MCP client: phase, subtasks done / total."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report
        self.phase = "starting"
        self.total = 0
        self.done: set[str] = set()

    def step(self, name: str, detail: str) -> None:
        self.phase = name
        self.report(f"{name} ({detail})")

    def show_plan(self, plan: Plan) -> None:
        self.total = len(plan.subtasks)
        self.report(f"plan: {self.total} subtask(s)")

    def subtask(self, sid: str, state: str, role: str | None, slot: str | None) -> None:
        if state == "done":
            self.done.add(sid)
        self.report(f"subtask {sid} {state}")


async def run_session(
    where: Where,
    task: str,
    *,
    context: Sequence[str] = (),
    check: str | None = None,
    check_timeout_s: float = 600.0,
    roles: str | None = None,
    lang: str | None = None,
    out: str | None = None,
    progress: Progress | None = None,
    heartbeat_s: float = 5.0,
) -> dict[str, Any]:
    """A session as ``familiar run`` runs it; progress at least every ``heartbeat_s``."""
    from familiar.session import service

    base = where.workspace or find_workspace(None)
    req = service.RunRequest(
        task=task,
        roles=roles,
        lang=lang,
        context=list(context),
        check=check,
        check_timeout=check_timeout_s,
        out=Path(out) if out else None,
        workspace=where.workspace,
        slots=where.slots,
        cwd=base,
    )
    notes: list[str] = []
    prepared = service.prepare(req)
    view = _ProgressView(notes.append)
    started = time.monotonic()

    async def beat() -> None:
        while True:
            if progress is not None:
                elapsed = round(time.monotonic() - started)
                message = (
                    f"{view.phase}: {len(view.done)}/{view.total or '?'} subtasks, {elapsed} s"
                )
                await progress(len(view.done), float(view.total) or None, message)
            await asyncio.sleep(heartbeat_s)

    def make_view(_fleet: Any) -> AbstractContextManager[Any]:
        return nullcontext(view)

    async with asyncio.TaskGroup() as tg:
        ticker = tg.create_task(beat())
        try:
            outcome = await service.run_session(prepared, req, view=make_view, notice=notes.append)
            service.deliver(prepared, req, outcome, notes.append)
        except FamiliarError as exc:
            ticker.cancel()
            return {
                "id": prepared.sid,
                "status": "failed",
                "error": str(exc),
                "directory": str(prepared.directory),
                "notes": notes,
            }
        ticker.cancel()
    return {
        "id": outcome.id,
        "status": outcome.status,
        "result": _cut(outcome.final or "", prepared.directory / "final.md"),
        "files": list(outcome.files),
        "check": outcome.check,
        "directory": str(outcome.directory),
        "notes": notes,
    }


def _cut(text: str, whole: Path) -> str:
    if len(text) <= RESULT_CHARS:
        return text
    return text[:RESULT_CHARS] + f"\n… (cut at {RESULT_CHARS:,} characters; the whole: {whole})"


def session(where: Where, sid: str) -> dict[str, Any]:
    """A session's state, plan, subtasks and result, by id (a unique prefix or ``last``)."""
    from familiar.session import SessionStore
    from familiar.session.service import resolve_id
    from familiar.store import read_record

    home = state_home(where.workspace or find_workspace(None))
    directory = home / "sessions" / resolve_id(home, sid)
    store = SessionStore(directory)
    state = store.read_state()
    plan = store.read_plan()
    subtasks = []
    for path in sorted((directory / "subtasks").glob("*.json")):
        if not path.name.endswith(".rejected.json"):
            record = read_record(path, "subtask record")
            subtasks.append(
                {k: record.get(k) for k in ("id", "status", "role", "slot", "latency_s")}
            )
    final = directory / "final.md"
    return {
        "id": directory.name,
        "status": None if state is None else state.status,
        "error": None if state is None else state.error,
        "failed": None if state is None else state.failed,
        "plan": None if plan is None else plan.model_dump(mode="json"),
        "subtasks": subtasks,
        "result": _cut(final.read_text(encoding="utf-8"), final) if final.exists() else None,
        "directory": str(directory),
    }


async def translate(
    where: Where,
    paths: Sequence[str],
    to: str,
    *,
    out: str | None = None,
    source: str = "auto",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """A translation batch exactly as ``familiar translate`` runs it (the same safety
    rules: never over a source), in its own process so its output stays off this
    server's stdout; cancelled with the call (its seats come back when it ends)."""
    import sys

    if not paths:
        raise ConfigError("give at least one path")
    if to not in ("en", "ja") or source not in ("auto", "en", "ja"):
        raise ConfigError("to must be 'en' or 'ja'; source 'auto', 'en' or 'ja'")
    workspace = (where.workspace or find_workspace(None)).resolve()
    for given in (*paths, *([out] if out else [])):
        # an agent names paths in the user's workspace: never read or write outside it
        # (links followed: a link out of the workspace is outside too)
        where_to = (workspace / given).resolve()
        if not where_to.is_relative_to(workspace):
            raise ConfigError(f"{given} is outside the workspace {workspace}")
    argv = [sys.executable, "-m", "familiar", "translate", *paths, "--to", to, "--json"]
    argv += ["--from", source, "--workspace", str(workspace)]
    if out:
        argv += ["--out", out]
    if where.slots is not None:
        argv += ["--slots", str(where.slots)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=workspace,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    started = time.monotonic()

    async def beat() -> None:
        while True:
            await asyncio.sleep(5.0)
            if progress is not None:
                await progress(0, None, f"translating: {round(time.monotonic() - started)} s")

    try:
        async with asyncio.TaskGroup() as tg:
            ticker = tg.create_task(beat())
            stdout, stderr = await proc.communicate()
            ticker.cancel()
    except BaseException:
        if proc.returncode is None:
            proc.terminate()  # SIGTERM: the batch stops within a second, seats freed
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
        raise
    errors = stderr.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode == 2:
        raise ConfigError(errors[-1].removeprefix("familiar: error: ") if errors else "usage error")
    try:
        report = json.loads(stdout.decode("utf-8"))
    except ValueError:
        raise FamiliarError(errors[-1] if errors else "translate printed no report") from None
    return {"exit_code": proc.returncode, "report": report, "warnings": errors[-20:]}
