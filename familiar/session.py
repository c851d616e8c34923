"""Agent sessions: plan -> constrained fan-out -> integrate -> translate.

Every step's result is written atomically into the session directory
``FAMILIAR_HOME/sessions/<correlation_id>/`` as soon as it completes:

    session.json        status, timings, roles, prompt versions, planner fallback reason
    task.md             the task as given
    config.json         the resolved configuration (slots without keys)
    plan.json           the validated plan
    subtasks/<id>.prompt.md, subtasks/<id>.json   each worker prompt and result
    integration.json    the merged deliverable and decision check
    final.md            the result in the requested language

``resume`` reads them back and redoes only what is missing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from familiar import copycheck
from familiar.backend import CallResult, SlotClient
from familiar.config import Config
from familiar.dispatch import Dispatcher, Pool, WorkItem
from familiar.errors import AnswerRejected, ConfigError, PlanInvalid, SessionFailed, StateError
from familiar.fleet import Fleet
from familiar.lang import NAMES, detect_lang
from familiar.plan import (
    INTEGRATION_SCHEMA,
    MAX_SUBTASKS,
    WORKER_SCHEMA,
    Integration,
    Plan,
    Subtask,
    WorkerOutput,
    extract_json,
    fallback_plan,
    parse_plan,
    plan_schema,
)
from familiar.prompts import Prompt, load_prompt
from familiar.store import read_record, write_json_atomic, write_text_atomic
from familiar.telemetry import Telemetry, current_span, new_span_id
from familiar.view import SessionView

log = structlog.get_logger("familiar.session")

PLANNERS = ("grandpa", "naughty", "kindergarten")
TASK_PROMPTS = (
    "plan.md",
    "plan_repair.md",
    "worker_task.md",
    "integrate.md",
    "translate_result.md",
)


@dataclass
class SessionOutcome:
    id: str
    directory: Path
    status: str
    final: str | None
    lang: str
    asked: int = 0  # worker calls made in this run (resume: only the missing ones)


def planner_role(cfg: Config) -> str:
    for role in PLANNERS:
        if cfg.role_config.has(role):
            return role
    raise ConfigError(
        f"role configuration {cfg.role_config.canonical()!r} has no planner or worker role;"
        " familiar run needs naughty or kindergarten"
    )


def check_runnable(cfg: Config, task_lang: str, lang: str | None) -> None:
    planner_role(cfg)
    if not cfg.role_config.workers:
        raise ConfigError("familiar run needs a worker role (naughty or kindergarten)")
    if lang and lang != task_lang and not cfg.role_config.has("translator"):
        raise ConfigError(
            f"--lang {lang} differs from the task's language ({task_lang}) but"
            " the translator role is not active"
        )


def _bullets(items: list[str] | tuple[str, ...], empty: str = "(none)") -> str:
    return "\n".join(f"- {i}" for i in items) if items else empty


class Session:
    """One run of a task. Construct with a directory; ``await run()``."""

    def __init__(
        self,
        cfg: Config,
        fleet: Fleet,
        directory: Path,
        *,
        view: SessionView,
        lang: str | None = None,
        max_subtasks: int = MAX_SUBTASKS,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.telemetry = telemetry or Telemetry(cfg.home, enabled=False)
        self._spans: dict[str, str] = {}
        self.cfg = cfg
        self.fleet = fleet
        self.dir = directory
        self.view = view
        self.max_subtasks = max_subtasks
        self.task = (directory / "task.md").read_text(encoding="utf-8")
        self.task_lang = detect_lang(self.task)
        self.lang = lang or self.task_lang
        self.planner = planner_role(cfg)
        self.prompts: dict[str, Prompt] = {
            name: load_prompt(cfg.workspace, name) for name in TASK_PROMPTS
        }
        for role in cfg.role_config.roles:
            name = cfg.roles[role].prompt
            self.prompts[name] = load_prompt(cfg.workspace, name)
        self.state: dict[str, Any] = self._load_state()
        self.asked = 0

    # -- bookkeeping --------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.dir.name

    def _load_state(self) -> dict[str, Any]:
        path = self.dir / "session.json"
        state: dict[str, Any] = read_record(path, "session state") if path.exists() else {}
        state.setdefault("id", self.id)
        state.setdefault("created", time.time())
        state.setdefault("steps", {})
        state.update(
            task_lang=self.task_lang,
            lang=self.lang,
            planner=self.planner,
            roles=self.cfg.role_config.canonical(),
            prompt_versions={n: p.version for n, p in sorted(self.prompts.items())},
        )
        return state

    def _save(self, **changes: Any) -> None:
        self.state.update(changes, updated=time.time())
        write_json_atomic(self.dir / "session.json", self.state)

    def _step(self, name: str, **info: Any) -> None:
        self.state["steps"][name] = {"finished": time.time(), **info}
        self._save()

    def client(self, role: str) -> SlotClient:
        return self.fleet[self.cfg.slots_for(role)[0].name]

    def _messages(self, role: str, user: str) -> list[dict[str, str]]:
        system = self.prompts[self.cfg.roles[role].prompt].text
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    async def _ask(
        self,
        role: str,
        client: SlotClient,
        messages: list[dict[str, str]],
        schema: Mapping[str, Any] | None,
        name: str,
        *,
        retry: bool = False,
    ) -> CallResult:
        sampling = self.cfg.roles[role].sampling
        use_schema = schema if client.slot.supports_json_schema else None
        # a retry after a rejected answer asks differently: warmer sampling, so a model
        # that copied an example at temperature 0 does not copy it again word for word
        temperature = max(sampling.temperature + 0.3, 0.7) if retry else sampling.temperature
        return await client.chat(
            messages,
            role=role,
            json_schema=use_schema,
            schema_name=name,
            temperature=min(temperature, 2.0),
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
        )

    def _examples(self, *names: str) -> list[str]:
        return [snippet for n in names for snippet in self.prompts[n].examples]

    @staticmethod
    def _problem(text: str, examples: list[str], allowed: str) -> str | None:
        """Why an answer cannot be kept: empty, or a copy of a prompt's example."""
        if not text.strip():
            return "the answer was empty"
        snippet = copycheck.copied(text, examples, allowed=allowed)
        if snippet is not None:
            shown = " ".join(snippet.split())
            shown = shown if len(shown) <= 60 else shown[:59] + "…"
            return f"the answer copied the prompt's example ({shown!r})"
        return None

    @staticmethod
    def _feedback(
        messages: list[dict[str, str]], answer: str, problem: str
    ) -> list[dict[str, str]]:
        return [
            *messages,
            {"role": "assistant", "content": answer},
            {
                "role": "user",
                "content": f"That answer cannot be used: {problem}. The example only shows"
                " the shape of an answer. Do the task above itself and answer again.",
            },
        ]

    # -- the flow ---------------------------------------------------------------------------

    async def run(self) -> SessionOutcome:
        self._save(status="running", started=self.state.get("started") or time.time())
        t0 = time.monotonic()
        with self.telemetry.span(
            "session.start",
            {
                "roles": self.cfg.role_config.canonical(),
                "planner": self.planner,
                "lang": self.lang,
                "task_chars": len(self.task),
                "resumed": bool(self.state.get("steps")),
            },
        ):
            status = "failed"
            try:
                outcome = await self._run()
                status = outcome.status
                return outcome
            except (asyncio.CancelledError, KeyboardInterrupt):
                status = "interrupted"
                raise
            finally:
                self.telemetry.emit(
                    "session.end",
                    {
                        "status": status,
                        "duration_ms": round((time.monotonic() - t0) * 1000),
                        "subtasks": len(self._spans),
                        "failed": len(self.state.get("failed", {})),
                    },
                )

    async def _run(self) -> SessionOutcome:
        try:
            plan = await self.plan()
            self.view.show_plan(plan)
            done, failed = await self.fan_out(plan)
            if failed:
                self._save(status="failed", failed=failed, finished=time.time())
                raise SessionFailed(
                    f"session {self.id}: {len(failed)} subtask(s) failed: "
                    + "; ".join(f"{k}: {v}" for k, v in failed.items())
                    + f" (resume with: familiar run --resume {self.id})"
                )
            deliverable = await self.integrate(plan, done)
            final = await self.translate(deliverable)
        except (asyncio.CancelledError, KeyboardInterrupt):
            self._save(status="interrupted")
            raise
        except SessionFailed:
            raise
        except Exception as exc:
            self._save(status="failed", error=f"{type(exc).__name__}: {exc}", finished=time.time())
            raise
        write_text_atomic(self.dir / "final.md", final)
        self._save(status="done", finished=time.time())
        return SessionOutcome(self.id, self.dir, "done", final, self.lang, asked=self.asked)

    async def plan(self) -> Plan:
        path = self.dir / "plan.json"
        if path.exists():
            try:
                return Plan.model_validate(read_record(path, "plan"))
            except ValidationError as exc:
                raise StateError(
                    f"plan {path} is corrupt ({exc.error_count()} invalid field(s));"
                    " remove it to plan again"
                ) from None
        self.view.step("planning", self.planner)
        client = self.client(self.planner)
        workers = self.cfg.role_config.workers
        hint = (
            'Mark about half the subtasks "hard" and half "easy" when both kinds of work exist.'
            if len(workers) > 1
            else ""
        )
        user = self.prompts["plan.md"].render(
            task=self.task, max_subtasks=self.max_subtasks, worker_hint=hint
        )
        messages = self._messages(self.planner, user)
        schema = plan_schema(self.max_subtasks)
        examples = self._examples("plan.md", self.cfg.roles[self.planner].prompt)
        reason = ""
        for round_ in range(2):  # the first answer, then one repair round
            result = await self._ask(self.planner, client, messages, schema, "plan")
            try:
                plan = parse_plan(result.text, self.max_subtasks)
                copied = copycheck.copied(result.text, examples, allowed=self.task)
                if copied is not None:
                    raise PlanInvalid(f"the plan copies the prompt's example ({copied[:60]!r})")
                break
            except PlanInvalid as exc:
                reason = str(exc)
                log.info("plan invalid", round=round_ + 1, reason=reason)
                messages = [
                    *messages,
                    {"role": "assistant", "content": result.text},
                    {
                        "role": "user",
                        "content": self.prompts["plan_repair.md"].render(error=reason),
                    },
                ]
        else:
            plan = fallback_plan(self.task)
        write_json_atomic(path, plan.model_dump(mode="json"))
        self.telemetry.emit(
            "plan.created",
            {
                "subtasks": len(plan.subtasks),
                "decisions": len(plan.decisions),
                "fallback": plan.fallback,
                "hard": sum(s.difficulty == "hard" for s in plan.subtasks),
            },
        )
        self._step(
            "plan",
            subtasks=len(plan.subtasks),
            fallback=plan.fallback,
            fallback_reason=reason if plan.fallback else None,
        )
        return plan

    def _finished(self, plan: Plan) -> dict[str, dict[str, Any]]:
        out = {}
        for s in plan.subtasks:
            path = self.dir / "subtasks" / f"{s.id}.json"
            if path.exists():
                record = read_record(path, "subtask record")
                if not isinstance(record.get("output"), str) and record.get("status") == "ok":
                    raise StateError(f"subtask record {path} is corrupt (no output)")
                if record.get("status") == "ok":
                    out[s.id] = record
        return out

    async def fan_out(self, plan: Plan) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        done = self._finished(plan)
        for sid, rec in done.items():
            self.view.subtask(sid, "done", rec["role"], rec["slot"])
        pending = [s for s in plan.subtasks if s.id not in done]
        failed: dict[str, str] = {}
        if not pending:
            return done, failed
        self.view.step("working", ", ".join(self.cfg.role_config.workers))
        pools = self._pools()
        blocked: set[str] = set()

        async def work(item: WorkItem[Subtask], pool: Pool) -> dict[str, Any]:
            return await self._work(plan, item.payload, pool, done, revision=None)

        async with Dispatcher(pools, work) as dispatcher:
            futures: dict[asyncio.Future[Any], str] = {}

            async def submit_ready() -> None:
                queued = set(futures.values())
                for s in pending:
                    if (
                        s.id in done
                        or s.id in failed
                        or s.id in blocked
                        or s.id in queued
                        or not set(s.depends_on) <= done.keys()
                    ):
                        continue
                    role = "naughty" if s.difficulty == "hard" else "kindergarten"
                    self.view.subtask(s.id, "queued", role, None)
                    self._spans[s.id] = span = new_span_id()
                    self.telemetry.emit(
                        "subtask.dispatched",
                        {
                            "subtask_id": s.id,
                            "role": role,
                            "difficulty": s.difficulty,
                        },
                        span_id=span,
                    )
                    futures[await dispatcher.submit(WorkItem(s.id, role, s))] = s.id

            await submit_ready()
            while futures:
                finished, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
                for fut in finished:
                    sid = futures.pop(fut)
                    result = fut.result()
                    if result.ok:
                        done[sid] = result.value
                    else:
                        failed[sid] = f"{type(result.error).__name__}: {result.error}"
                        self.view.subtask(sid, "failed", result.ran_as, result.slot)
                        self.telemetry.emit(
                            "subtask.finished",
                            {
                                "subtask_id": sid,
                                "role": result.ran_as,
                                "slot": result.slot,
                                "status": "error",
                                "error.type": type(result.error).__name__,
                                "duration_ms": round((result.finished - result.started) * 1000),
                            },
                            parent_span_id=self._spans.get(sid),
                        )
                        for dep in plan.dependents(sid):
                            blocked.add(dep)
                            failed.setdefault(dep, f"skipped: depends on failed {sid}")
                await submit_ready()
        return done, failed

    async def _work(
        self, plan: Plan, s: Subtask, pool: Pool, done: Mapping[str, Any], revision: str | None
    ) -> dict[str, Any]:
        self.view.subtask(s.id, "running", pool.role, pool.slot)
        token = current_span.set(self._spans.get(s.id) or current_span.get())
        try:
            return await self._work_in_span(plan, s, pool, done, revision)
        finally:
            current_span.reset(token)

    async def _work_in_span(
        self, plan: Plan, s: Subtask, pool: Pool, done: Mapping[str, Any], revision: str | None
    ) -> dict[str, Any]:
        started = time.monotonic()
        deps = (
            "\n\n".join(
                f"[{d}] {plan.subtask(d).title}:\n{done[d]['output']}" for d in s.depends_on
            )
            or "(none)"
        )
        note = (
            f"\nA reviewer found your previous output broke a decision: {revision}\n"
            "Fix that and keep everything else.\n"
            if revision
            else ""
        )
        user = self.prompts["worker_task.md"].render(
            goal=plan.goal,
            decisions=_bullets(plan.decisions),
            subtask_id=s.id,
            title=s.title,
            instructions=s.instructions,
            acceptance=s.acceptance or "(none)",
            dependencies=deps,
            revision=note,
        )
        messages = self._messages(pool.role, user)
        base = self.dir / "subtasks" / s.id
        write_text_atomic(
            base.with_suffix(".prompt.md"),
            "\n\n".join(f"## {m['role']}\n\n{m['content']}" for m in messages),
        )
        client: SlotClient = pool.client
        examples = self._examples("worker_task.md", self.cfg.roles[pool.role].prompt)
        # what the answer may legitimately repeat: the task and this subtask's own inputs
        # (never the rendered prompt, which holds the example itself)
        allowed = "\n".join(
            (self.task, s.title, s.instructions, s.acceptance, deps, *plan.decisions)
        )
        checks: list[str] = []
        ask = messages
        for attempt in range(2):  # one retry, asked differently, for a rejected answer
            self.asked += 1
            result = await self._ask(
                pool.role, client, ask, WORKER_SCHEMA, "work", retry=attempt > 0
            )
            try:
                parsed = WorkerOutput.model_validate(extract_json(result.text))
                problem = None
            except (PlanInvalid, ValidationError):
                parsed = WorkerOutput(output=result.text.strip(), notes="answer was not JSON")
                # prose from a model without constrained decoding is kept; a JSON answer cut
                # off at max_tokens is not a finished answer
                problem = (
                    f"the answer was cut off at max_tokens ({result.completion_tokens} tokens)"
                    if result.finish_reason == "length"
                    else None
                )
            problem = problem or self._problem(parsed.output, examples, allowed)
            if problem is None:
                break
            checks.append(problem)
            log.info("worker answer rejected", subtask=s.id, attempt=attempt + 1, problem=problem)
            ask = self._feedback(messages, result.text, problem)
        else:
            write_json_atomic(
                base.with_suffix(".rejected.json"),
                {"id": s.id, "status": "rejected", "checks": checks, "answer": result.text},
            )
            raise AnswerRejected(f"subtask {s.id}: {checks[-1]} (twice; answer not kept)")
        record = {
            "id": s.id,
            "status": "ok",
            "role": pool.role,
            "slot": pool.slot,
            "preferred_role": "naughty" if s.difficulty == "hard" else "kindergarten",
            "revision": bool(revision),
            "output": parsed.output,
            "decisions_kept": parsed.decisions_kept,
            "notes": parsed.notes,
            "prompt_version": self.prompts["worker_task.md"].version,
            "finish_reason": result.finish_reason,
            "checks": checks,
            "attempts": result.attempts,
            "latency_s": round(result.latency_s, 3),
            "ttft_s": None if result.ttft_s is None else round(result.ttft_s, 3),
            "completion_tokens": result.completion_tokens,
            "replica": result.replica,
        }
        write_json_atomic(base.with_suffix(".json"), record)
        self.view.subtask(s.id, "done", pool.role, pool.slot)
        fields: dict[str, Any] = {
            "subtask_id": s.id,
            "role": pool.role,
            "slot": pool.slot,
            "status": "ok",
            "revision": bool(revision),
            "duration_ms": round((time.monotonic() - started) * 1000),
        }
        if self.telemetry.content:
            fields["prompt"] = messages[-1]["content"]
            fields["output"] = parsed.output
        self.telemetry.emit("subtask.finished", fields)
        return record

    async def integrate(self, plan: Plan, done: dict[str, dict[str, Any]]) -> str:
        path = self.dir / "integration.json"
        if path.exists():
            recorded = read_record(path, "integration record")
            if not isinstance(recorded.get("deliverable"), str):
                raise StateError(f"integration record {path} is corrupt (no deliverable)")
            return str(recorded["deliverable"])
        if len(plan.subtasks) == 1 and not plan.decisions:
            deliverable = done[plan.subtasks[0].id]["output"]
            write_json_atomic(path, {"deliverable": deliverable, "violations": [], "rounds": 0})
            return str(deliverable)
        self.view.step("integrating", self.planner)
        integration = await self._integrate_once(plan, done)
        rounds = 1
        to_revise = {v.subtask_id: v for v in integration.violations if v.subtask_id in done}
        if to_revise:  # one bounded revision round, then a final merge
            self.view.step("revising", ", ".join(sorted(to_revise)))
            pools = {p.role: p for p in self._pools()}
            for sid, violation in sorted(to_revise.items()):
                rec = done[sid]
                pool = pools.get(rec["role"]) or next(iter(pools.values()))
                done[sid] = await self._work(
                    plan,
                    plan.subtask(sid),
                    pool,
                    done,
                    revision=f"{violation.decision}: {violation.explanation}",
                )
            integration = await self._integrate_once(plan, done)
            rounds = 2
        write_json_atomic(
            path, {**integration.model_dump(), "rounds": rounds, "revised": sorted(to_revise)}
        )
        self._step(
            "integrate",
            rounds=rounds,
            revised=sorted(to_revise),
            checks=integration.checks,
            fallback=integration.fallback,
        )
        return integration.deliverable

    def _pools(self) -> list[Pool]:
        return [
            Pool(role, slot.name, self.fleet[slot.name].seats.total, self.fleet[slot.name])
            for role in self.cfg.role_config.workers
            for slot in self.cfg.slots_for(role)
        ]

    async def _integrate_once(self, plan: Plan, done: dict[str, dict[str, Any]]) -> Integration:
        """The planner's merge; a merge that is empty or copies the prompt's example is
        asked again differently once, then replaced by a plain merge of the outputs."""
        outputs = "\n\n".join(f"[{s.id}] {s.title}:\n{done[s.id]['output']}" for s in plan.subtasks)
        user = self.prompts["integrate.md"].render(
            goal=plan.goal, task=self.task, decisions=_bullets(plan.decisions), outputs=outputs
        )
        client = self.client(self.planner)
        messages = self._messages(self.planner, user)
        examples = self._examples("integrate.md", self.cfg.roles[self.planner].prompt)
        allowed = "\n".join((self.task, outputs, *plan.decisions))
        checks: list[str] = []
        ask = messages
        for attempt in range(2):
            result = await self._ask(
                self.planner, client, ask, INTEGRATION_SCHEMA, "integration", retry=attempt > 0
            )
            try:
                merged = Integration.model_validate(extract_json(result.text))
            except (PlanInvalid, ValidationError):
                checks.append("the answer was not the JSON object asked for")
                break
            problem = self._problem(merged.deliverable, examples, allowed)
            if problem is None:
                merged.checks, merged.fallback = checks, None
                return merged
            checks.append(problem)
            log.info("integration answer rejected", attempt=attempt + 1, problem=problem)
            ask = self._feedback(messages, result.text, problem)
        log.warning("integration fell back to a plain merge of the worker outputs", why=checks[-1])
        return Integration(deliverable=plain_merge(plan, done), checks=checks, fallback=checks[-1])

    async def translate(self, text: str) -> str:
        if self.lang == self.task_lang:
            return text
        path = self.dir / f"final.{self.lang}.json"
        if path.exists():
            recorded = read_record(path, "translation record")
            if not isinstance(recorded.get("text"), str):
                raise StateError(f"translation record {path} is corrupt (no text)")
            return str(recorded["text"])
        self.view.step("translating", "translator")
        user = self.prompts["translate_result.md"].render(
            source_lang=NAMES[self.task_lang], target_lang=NAMES[self.lang], text=text
        )
        client = self.client("translator")
        result = await self._ask(
            "translator", client, self._messages("translator", user), None, "translation"
        )
        write_json_atomic(
            path, {"text": result.text.strip(), "from": self.task_lang, "to": self.lang}
        )
        self._step("translate", to=self.lang)
        return result.text.strip()


def check_resumable(directory: Path) -> None:
    """Read every record of a session before resuming it: a corrupt one is a StateError
    naming the file, raised before anything is written (the directory stays as it is)."""
    for path in (directory / "session.json", directory / "plan.json"):
        if path.exists():
            record = read_record(path, path.stem.replace("session", "session state"))
            if path.name == "plan.json":
                try:
                    Plan.model_validate(record)
                except ValidationError as exc:
                    raise StateError(
                        f"plan {path} is corrupt ({exc.error_count()} invalid field(s));"
                        " remove it to plan again"
                    ) from None
    for path in sorted((directory / "subtasks").glob("*.json")):
        if path.name.endswith(".rejected.json"):
            continue
        record = read_record(path, "subtask record")
        if record.get("status") == "ok" and not isinstance(record.get("output"), str):
            raise StateError(f"subtask record {path} is corrupt (no output); remove it to redo")
    for path in (directory / "integration.json", *directory.glob("final.*.json")):
        if path.exists():
            read_record(path, "record")


def plain_merge(plan: Plan, done: Mapping[str, Mapping[str, Any]]) -> str:
    """The worker outputs in plan order under their titles: the merge of last resort."""
    return "\n\n".join(
        f"## {s.title}\n\n{str(done[s.id]['output']).strip()}" for s in plan.subtasks
    )


def create_session_dir(cfg: Config, task: str, sid: str) -> Path:
    directory = cfg.home / "sessions" / sid
    try:
        directory.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise StateError(
            f"cannot create a session under {cfg.home / 'sessions'}: {exc.strerror or exc}"
            " (set FAMILIAR_HOME to a writable directory)"
        ) from None
    write_text_atomic(directory / "task.md", task)
    write_json_atomic(
        directory / "config.json",
        {
            "roles": cfg.role_config.canonical(),
            "role_source": cfg.role_source,
            "workspace": str(cfg.workspace),
            "slots_file": str(cfg.slots_file),
            "slots": {name: s.public() for name, s in cfg.active_slots.items()},
        },
    )
    return directory


def list_sessions(home: Path) -> list[dict[str, Any]]:
    root = home / "sessions"
    rows = []
    for d in sorted(root.iterdir() if root.is_dir() else [], key=_mtime):
        state_path = d / "session.json"
        if not state_path.exists():
            continue
        try:
            st = read_record(state_path, "session state")
            task = (d / "task.md").read_text(encoding="utf-8") if (d / "task.md").exists() else ""
            started, finished = st.get("started"), st.get("finished")
            duration = (
                round(finished - started, 1)
                if isinstance(started, int | float) and isinstance(finished, int | float)
                else None
            )
            row = {
                "id": d.name,
                "status": str(st.get("status", "?")),
                "roles": str(st.get("roles", "")),
                "started": started if isinstance(started, int | float) else None,
                "duration_s": duration,
                "task": " ".join(task.split())[:60],
                "error": None,
            }
        except (StateError, OSError, UnicodeDecodeError) as exc:
            row = {
                "id": d.name,
                "status": "unreadable",
                "roles": "",
                "started": None,
                "duration_s": None,
                "task": "",
                "error": str(exc),
            }
        rows.append(row)
    return rows


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
