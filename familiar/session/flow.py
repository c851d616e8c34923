"""The flow of a session: plan -> constrained fan-out -> integrate -> translate.

Each step is one method of :class:`Session` (the closing ones, integrate and translate,
in ``integrate.py``), and each writes its result into the session directory
(:class:`~familiar.session.store.SessionStore`) as soon as it completes; a resumed
session reads them back and redoes only what is missing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from familiar.config.workspace import Config
from familiar.dispatch import Dispatcher, ItemResult, Pool, WorkItem
from familiar.errors import SessionFailed
from familiar.fleet import Fleet
from familiar.lang import detect_lang
from familiar.plan import MAX_SUBTASKS, Plan, Subtask
from familiar.routing import planner_role, steals
from familiar.session import messages as msg
from familiar.session.calls import Calls
from familiar.session.context import Context
from familiar.session.integrate import Done, Integrator
from familiar.session.prompts import Prompt, load_prompt
from familiar.session.schedule import schedule
from familiar.session.store import SessionStore, SubtaskRecord
from familiar.session.view import SessionView
from familiar.session.worker import SubtaskWorker
from familiar.session.workspace import (
    WorkspaceOptions,
    WorkspaceSteps,
    result_files_record,
)
from familiar.telemetry import Telemetry

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
    files: tuple[str, ...] = ()  # the paths of the files the session wrote
    check: str | None = None  # the last check run, in words (None: no check)
    totals: dict[str, Any] | None = None  # requests, tokens and wall time of this run

    def closing_line(self) -> str:
        """One line for the end of a run: status, wall time, requests, tokens, where."""
        t = self.totals or {}
        where = self.directory / "final.md"
        cached = t.get("cached_tokens") or 0
        return (
            f"session {self.id} {self.status} in {t.get('seconds', 0):.1f} s:"
            f" {t.get('requests', 0)} request(s), {t.get('prompt_tokens', 0):,} tokens in"
            + (f" ({cached:,} from the servers' cache)," if cached else ",")
            + f" {t.get('completion_tokens', 0):,} out; result in {where}"
        )


def load_prompts(cfg: Config) -> dict[str, Prompt]:
    """The session's task prompts and the system prompt of every active role."""
    names = (*TASK_PROMPTS, *(cfg.roles[role].prompt for role in cfg.role_config.roles))
    return {name: load_prompt(cfg.workspace, name) for name in names}


def worker_pools(cfg: Config, fleet: Fleet) -> list[Pool]:
    """One pool per active worker role and slot, as many seats as its deployment has."""
    return [pool for role in cfg.role_config.workers for pool in fleet.pools(cfg, role)]


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
        context: Context | None = None,
        workspace: WorkspaceOptions | None = None,
    ) -> None:
        self.telemetry = telemetry or Telemetry(cfg.home, enabled=False)
        self.cfg, self.fleet, self.dir, self.view = cfg, fleet, directory, view
        self.max_subtasks = max_subtasks
        self.store = SessionStore(directory)
        self.task = self.store.read_task()
        self.task_lang = detect_lang(self.task)
        self.lang = lang or self.task_lang
        self.planner = planner_role(cfg)
        self.prompts = load_prompts(cfg)
        self.state = self.store.open_state(
            task_lang=self.task_lang,
            lang=self.lang,
            planner=self.planner,
            roles=cfg.role_config.canonical(),
            prompt_versions={n: p.version for n, p in sorted(self.prompts.items())},
        )
        self.context = context
        self.calls = Calls(cfg, fleet, self.prompts, workspace.policy if workspace else None)
        self._t0 = time.monotonic()
        self.worker = SubtaskWorker(
            self.calls, self.store, view, self.telemetry, self.task, context
        )
        self.workspace = (
            None
            if workspace is None
            else WorkspaceSteps(
                workspace,
                self.store,
                self.calls,
                self.worker,
                view,
                self.telemetry,
                lambda: worker_pools(cfg, fleet),
            )
        )
        self.integrator = Integrator(
            planner=self.planner,
            task=self.task,
            prompts=self.prompts,
            calls=self.calls,
            store=self.store,
            view=view,
            worker=self.worker,
            workspace=self.workspace,
            pools=lambda: worker_pools(cfg, fleet),
            step=self._step,
        )

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def asked(self) -> int:
        return self.calls.worker_calls

    def _save(self, **changes: Any) -> None:
        self.state.record(**changes)
        self.store.save_state(self.state)

    def _step(self, name: str, **info: Any) -> None:
        self.state.finish_step(name, **info)
        self.store.save_state(self.state)

    async def run(self) -> SessionOutcome:
        """The whole flow inside the ``session.start`` span; ``session.end`` at the end."""
        self._save(status="running", started=self.state.started or time.time())
        t0 = self._t0 = time.monotonic()
        root = {
            "roles": self.cfg.role_config.canonical(),
            "planner": self.planner,
            "lang": self.lang,
            "task_chars": len(self.task),
            "resumed": bool(self.state.steps),
        }
        with self.telemetry.span("session.start", root):
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
                        "subtasks": len(self.worker.spans),
                        "failed": len(self.state.failed or {}),
                    },
                )

    async def _run(self) -> SessionOutcome:
        try:
            plan = await self.plan()
            self.view.show_plan(plan)
            done, failed = await self.fan_out(plan)
            if failed:
                self._save(
                    status="failed", failed=failed, finished=time.time(), totals=self.totals()
                )
                raise SessionFailed(
                    f"session {self.id}: {len(failed)} subtask(s) failed: "
                    + "; ".join(f"{k}: {v}" for k, v in failed.items())
                    + f" (resume with: familiar run --resume {self.id})"
                )
            deliverable = await self.integrate(plan, done)
            files, check = await self.judge(plan, done)
            final = await self.translate(deliverable)
        except (asyncio.CancelledError, KeyboardInterrupt):
            self._save(status="interrupted")
            raise
        except SessionFailed:
            raise
        except Exception as exc:
            self._save(status="failed", error=f"{type(exc).__name__}: {exc}", finished=time.time())
            raise
        self.store.save_final(final)
        self._save(status="done", finished=time.time(), totals=self.totals())
        return SessionOutcome(
            self.id, self.dir, "done", final, self.lang, self.asked, files, check, self.totals()
        )

    def totals(self) -> dict[str, Any]:
        """Requests, tokens and wall time of this run (a resume counts its own)."""
        return {
            "requests": self.calls.requests,
            "prompt_tokens": self.calls.prompt_tokens,
            "completion_tokens": self.calls.completion_tokens,
            "cached_tokens": self.calls.cached_tokens,
            "seconds": round(time.monotonic() - self._t0, 2),
        }

    async def judge(self, plan: Plan, done: Done) -> tuple[tuple[str, ...], str | None]:
        """The files the session wrote, merged and recorded, and the user's check on
        them (one revision round when it fails); SessionFailed when it still fails."""
        if self.workspace is None:
            return (), None
        merged, run = await self.workspace.judge(plan, done)
        self._step("files", **result_files_record(merged, run))
        paths = tuple(f.path for f in merged.files)
        if run is None or run.passed:
            return paths, None if run is None else run.summary()
        tail = run.tail[-1500:]
        self._save(status="failed", error=f"check failed: {run.summary()}", finished=time.time())
        raise SessionFailed(
            f"session {self.id}: check failed: `{run.command}` {run.summary()}; its output"
            f" ends:\n{tail}\n(files in {self.dir / 'files'};"
            f" resume with: familiar run --resume {self.id})"
        )

    async def plan(self) -> Plan:
        """The recorded plan, else the planner's (one repair round, else a fallback)."""
        recorded = self.store.read_plan()
        if recorded is not None:
            return recorded
        self.view.step("planning", self.planner)
        user = msg.planner_user(
            self.prompts["plan.md"],
            self.task,
            self.max_subtasks,
            self.cfg.role_config.workers,
            self.context,
        )
        messages = self.calls.messages(self.planner, user)
        paths = self.context.paths if self.context else ()
        plan, reason = await self.calls.plan(
            self.planner, messages, self.task, self.max_subtasks, paths
        )
        self.store.save_plan(plan)
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

    async def fan_out(self, plan: Plan) -> tuple[Done, dict[str, str]]:
        """Every subtask through the dispatcher, each once its dependencies are done;
        the records of those done and the reasons of those failed or skipped."""
        done = self.store.finished(plan)
        for sid, rec in done.items():
            self.view.subtask(sid, "done", rec.role, rec.slot)
        failed: dict[str, str] = {}
        if all(s.id in done for s in plan.subtasks):
            return done, failed
        self.view.step("working", ", ".join(self.cfg.role_config.workers))

        async def work(item: WorkItem[Subtask], pool: Pool) -> SubtaskRecord:
            return await self.worker.run(plan, item.payload, pool, done)

        futures: dict[asyncio.Future[ItemResult[SubtaskRecord]], str] = {}
        pools = worker_pools(self.cfg, self.fleet)
        async with Dispatcher(pools, work, steals=steals(self.cfg)) as dispatcher:
            while True:
                step = schedule(plan, done.keys(), failed.keys(), set(futures.values()))
                failed.update(step.skipped)
                for s in step.ready:
                    futures[await dispatcher.submit(self.worker.queued(s))] = s.id
                if not futures:
                    break
                finished, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
                for fut in finished:
                    sid, result = futures.pop(fut), fut.result()
                    if result.value is not None:
                        done[sid] = result.value
                    else:
                        failed[sid] = f"{type(result.error).__name__}: {result.error}"
                        self.worker.failed(sid, result)
        return done, failed

    async def integrate(self, plan: Plan, done: Done) -> str:
        """The integrator's step (``session/integrate.py``)."""
        return await self.integrator.integrate(plan, done)

    async def translate(self, text: str) -> str:
        """The deliverable in the requested language (the translator-kind role)."""
        if self.lang == self.task_lang:
            return text
        return await self.integrator.translate(text, self.cfg, self.task_lang, self.lang)
