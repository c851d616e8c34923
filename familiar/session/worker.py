"""One subtask, from its constrained prompt to its record: what a worker task of the
dispatcher runs for the session (and the integrator's revision round asks again)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from familiar.dispatch import ItemResult, Pool, WorkItem
from familiar.errors import AnswerRejected
from familiar.plan import Plan, Subtask
from familiar.routing import preferred_role
from familiar.session import messages as msg
from familiar.session.calls import Calls
from familiar.session.context import Context
from familiar.session.store import SessionStore, SubtaskRecord
from familiar.session.view import SessionView
from familiar.telemetry import Telemetry, current_span, new_span_id


class SubtaskWorker:
    """Queues, runs and reports subtasks: the ``subtask.dispatched`` span of each, and its
    ``subtask.finished`` event (ok from :meth:`run`, error from :meth:`failed`)."""

    def __init__(
        self,
        calls: Calls,
        store: SessionStore,
        view: SessionView,
        telemetry: Telemetry,
        task: str,
        context: Context | None = None,
    ) -> None:
        self.context = context
        self.calls = calls
        self.store = store
        self.view = view
        self.telemetry = telemetry
        self.task = task
        self.spans: dict[str, str] = {}  # subtask id -> its subtask.dispatched span

    def queued(self, s: Subtask) -> WorkItem[Subtask]:
        """The work item of a subtask ready to run, routed by its difficulty."""
        role = preferred_role(s.difficulty, self.calls.cfg)
        self.view.subtask(s.id, "queued", role, None)
        self.spans[s.id] = span = new_span_id()
        fields = {"subtask_id": s.id, "role": role, "difficulty": s.difficulty}
        self.telemetry.emit("subtask.dispatched", fields, span_id=span)
        return WorkItem(s.id, role, s)

    def failed(self, sid: str, result: ItemResult[SubtaskRecord]) -> None:
        """Show and report a subtask whose run raised (its error is in ``result``)."""
        self.view.subtask(sid, "failed", result.ran_as, result.slot)
        fields = {
            "subtask_id": sid,
            "role": result.ran_as,
            "slot": result.slot,
            "status": "error",
            "error.type": type(result.error).__name__,
            "duration_ms": round((result.finished - result.started) * 1000),
        }
        self.telemetry.emit("subtask.finished", fields, parent_span_id=self.spans.get(sid))

    async def run(
        self,
        plan: Plan,
        s: Subtask,
        pool: Pool,
        done: Mapping[str, SubtaskRecord],
        revision: str | None = None,
    ) -> SubtaskRecord:
        """Ask, check, record. ``done`` holds the dependencies' records; ``revision`` is a
        reviewer's note on a previous output. AnswerRejected when the checks refuse twice."""
        self.view.subtask(s.id, "running", pool.role, pool.slot)
        token = current_span.set(self.spans.get(s.id) or current_span.get())
        try:
            return await self._run(plan, s, pool, done, revision)
        finally:
            current_span.reset(token)

    async def _run(
        self,
        plan: Plan,
        s: Subtask,
        pool: Pool,
        done: Mapping[str, SubtaskRecord],
        revision: str | None,
    ) -> SubtaskRecord:
        started = time.monotonic()
        prompt = self.calls.prompts["worker_task.md"]
        deps = msg.dependencies(plan, s, {d: done[d].output for d in s.depends_on})
        user = msg.worker_user(
            prompt,
            plan,
            s,
            deps,
            revision,
            files=msg.files_section(plan, s, self.context),
            writes_files=self.calls.files is not None,
        )
        messages = self.calls.messages(pool.role, user)
        self.store.save_prompt(s.id, msg.transcript(messages))
        answer = await self.calls.work(
            pool.role,
            pool.client,
            messages,
            self.calls.examples("worker_task.md", pool.role),
            msg.worker_allowed(self.task, plan, s, deps),
            sid=s.id,
        )
        result, parsed = answer.result, answer.parsed
        if not answer.kept:
            self.store.save_rejected(s.id, answer.checks, result.text)
            raise AnswerRejected(f"subtask {s.id}: {answer.checks[-1]} (twice; answer not kept)")
        record = SubtaskRecord(
            id=s.id,
            status="ok",
            role=pool.role,
            slot=pool.slot,
            preferred_role=preferred_role(s.difficulty, self.calls.cfg),
            revision=bool(revision),
            output=parsed.output,
            decisions_kept=parsed.decisions_kept,
            notes=parsed.notes,
            prompt_version=prompt.version,
            finish_reason=result.finish_reason,
            checks=answer.checks,
            attempts=result.attempts,
            latency_s=round(result.latency_s, 3),
            ttft_s=None if result.ttft_s is None else round(result.ttft_s, 3),
            completion_tokens=result.completion_tokens,
            replica=result.replica,
            files=[{"path": f.path, "content": f.content} for f in answer.files],
        )
        self.store.save_subtask(record)
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
        if answer.files:
            fields["files"] = len(answer.files)
        self.telemetry.emit("subtask.finished", fields)
        return record
