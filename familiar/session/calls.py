"""A session's conversations with its models: the role's system prompt and sampling,
schema-constrained where the runtime supports it, and the bounded loops that ask again
after a refused answer (the checks themselves are pure, in :mod:`.answers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from familiar.client.backend import CallResult, SlotClient
from familiar.config.workspace import Config
from familiar.errors import PlanInvalid
from familiar.fleet import Fleet
from familiar.plan import (
    FILES_SCHEMA,
    INTEGRATION_SCHEMA,
    WORKER_SCHEMA,
    Integration,
    Plan,
    WorkerOutput,
    fallback_plan,
    plan_schema,
    with_files,
)
from familiar.session import answers
from familiar.session.files import FileOut, FilesPolicy
from familiar.session.messages import Messages, chat, feedback, follow_up
from familiar.session.prompts import Prompt

FIX_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"files": FILES_SCHEMA, "notes": {"type": "string", "maxLength": 300}},
    "required": ["files", "notes"],
    "additionalProperties": False,
}

log = structlog.get_logger("familiar.session")


@dataclass
class WorkAnswer:
    """A worker's last answer; ``kept`` False when the checks refused it twice."""

    result: CallResult
    parsed: WorkerOutput
    checks: list[str] = field(default_factory=list)
    kept: bool = True
    files: list[FileOut] = field(default_factory=list)


class Calls:
    """Asks the session's roles; counts the worker calls made in this run."""

    def __init__(
        self,
        cfg: Config,
        fleet: Fleet,
        prompts: Mapping[str, Prompt],
        files: FilesPolicy | None = None,
    ) -> None:
        self.cfg = cfg
        self.fleet = fleet
        self.prompts = prompts
        self.files = files  # None: answers are text only (no workspace session)
        self.worker_calls = 0
        self.requests = 0  # every answer asked for in this run, and its tokens
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0  # prompt tokens the servers said came from their cache

    def client(self, role: str) -> SlotClient:
        return self.fleet.client_for(self.cfg, role)

    def messages(self, role: str, user: str) -> Messages:
        return chat(self.prompts[self.cfg.roles[role].prompt].text, user)

    def instructions(self, role: str) -> str:
        """The role's own system prompt (an answer may not merely repeat it)."""
        return self.prompts[self.cfg.roles[role].prompt].text

    def examples(self, task_prompt: str, role: str) -> list[str]:
        """The example snippets of a task prompt and of the role's system prompt."""
        names = (task_prompt, self.cfg.roles[role].prompt)
        return [snippet for n in names for snippet in self.prompts[n].examples]

    async def ask(
        self,
        role: str,
        client: SlotClient,
        messages: Messages,
        schema: Mapping[str, Any] | None,
        name: str,
        *,
        retry: bool = False,
    ) -> CallResult:
        sampling = self.cfg.roles[role].sampling
        result = await client.chat(
            messages,
            role=role,
            json_schema=schema if client.slot.supports_json_schema else None,
            schema_name=name,
            temperature=answers.retry_temperature(sampling.temperature, retry),
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
        )
        self.requests += 1
        self.prompt_tokens += result.prompt_tokens or 0
        self.completion_tokens += result.completion_tokens or 0
        self.cached_tokens += result.cached_tokens or 0
        return result

    async def plan(
        self,
        role: str,
        messages: Messages,
        task: str,
        max_subtasks: int,
        paths: tuple[str, ...] = (),
    ) -> tuple[Plan, str]:
        """The planner's plan after at most one repair round, else the one-subtask
        fallback plan; and why the last refused answer was refused ("" if none was).
        With context ``paths``, each subtask names the files it needs from them."""
        client = self.client(role)
        schema = plan_schema(max_subtasks, paths=paths)
        examples = self.examples("plan.md", role)
        reason = ""
        for round_ in range(2):  # the first answer, then one repair round
            result = await self.ask(role, client, messages, schema, "plan")
            try:
                plan = answers.plan_answer(result, max_subtasks, examples, task, paths)
                return plan, reason
            except PlanInvalid as exc:
                reason = str(exc)
                log.info("plan invalid", round=round_ + 1, reason=reason)
                repair = self.prompts["plan_repair.md"].render(error=reason)
                messages = follow_up(messages, result.text, repair)
        return fallback_plan(task, paths), reason

    async def work(
        self,
        role: str,
        client: SlotClient,
        messages: Messages,
        examples: list[str],
        allowed: str,
        *,
        sid: str,
    ) -> WorkAnswer:
        """A worker's answer; a refused one is asked again once, differently."""
        checks: list[str] = []
        ask = messages
        schema = WORKER_SCHEMA if self.files is None else with_files(WORKER_SCHEMA)
        for attempt in range(2):
            self.worker_calls += 1
            result = await self.ask(role, client, ask, schema, "work", retry=attempt > 0)
            parsed, problem = answers.worker_answer(result)
            problem = problem or answers.problem(
                parsed.output, examples, allowed, self.instructions(role)
            )
            files: list[FileOut] = []
            if problem is None and self.files is not None:
                files, problem = self.files.check((f.model_dump() for f in parsed.files), sid)
            if problem is None:
                return WorkAnswer(result, parsed, checks, files=files)
            checks.append(problem)
            log.info("worker answer rejected", subtask=sid, attempt=attempt + 1, problem=problem)
            ask = feedback(messages, result.text, problem)
        return WorkAnswer(result, parsed, checks, kept=False)

    async def merge(
        self, role: str, messages: Messages, examples: list[str], allowed: str, plain: str
    ) -> Integration:
        """The planner's merge; a merge that is empty, degenerate, cut at ``max_tokens`` or
        copies the prompt's example is asked again differently once, then replaced by
        ``plain`` (a plain merge, recorded with the reason)."""
        client = self.client(role)
        checks: list[str] = []
        ask = messages
        schema = INTEGRATION_SCHEMA if self.files is None else with_files(INTEGRATION_SCHEMA)
        for attempt in range(2):
            result = await self.ask(role, client, ask, schema, "integration", retry=attempt > 0)
            merged = answers.integration_answer(result)
            if merged is None and answers.cut_off(result) is None:
                checks.append(answers.NOT_JSON)
                break
            problem = answers.cut_off(result) or answers.problem(
                merged.deliverable if merged else "", examples, allowed, self.instructions(role)
            )
            if problem is None and merged is not None and self.files is not None:
                _, problem = self.files.check((f.model_dump() for f in merged.files), "integrator")
            if problem is None and merged is not None:
                merged.checks, merged.fallback = checks, None
                merged.finish_reason = result.finish_reason
                return merged
            problem = problem or answers.NOT_JSON
            checks.append(problem)
            log.info("integration answer rejected", attempt=attempt + 1, problem=problem)
            ask = feedback(messages, result.text, problem)
        log.warning("integration fell back to a plain merge of the worker outputs", why=checks[-1])
        return Integration(deliverable=plain, checks=checks, fallback=checks[-1])

    async def fix_files(self, role: str, messages: Messages) -> tuple[list[FileOut], str | None]:
        """The integrator's corrected files after a failed check (asked once): the files,
        and why they cannot be used (None: they can)."""
        assert self.files is not None
        result = await self.ask(role, self.client(role), messages, FIX_SCHEMA, "fix")
        cut = answers.cut_off(result)
        if cut is not None:
            return [], cut
        fixed = answers.fix_answer(result)
        if fixed is None:
            return [], answers.NOT_JSON
        return self.files.check(fixed, "integrator")
