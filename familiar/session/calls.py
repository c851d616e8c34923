"""A session's conversations with its models: the role's system prompt and sampling,
schema-constrained where the runtime supports it, and the bounded loops that ask again
after a refused answer (the checks themselves are pure, in :mod:`.answers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from familiar.backend import CallResult, SlotClient
from familiar.config import Config
from familiar.errors import PlanInvalid
from familiar.fleet import Fleet
from familiar.plan import (
    INTEGRATION_SCHEMA,
    WORKER_SCHEMA,
    Integration,
    Plan,
    WorkerOutput,
    fallback_plan,
    plan_schema,
)
from familiar.prompts import Prompt
from familiar.session import answers
from familiar.session.messages import Messages, chat, feedback, follow_up

log = structlog.get_logger("familiar.session")


@dataclass
class WorkAnswer:
    """A worker's last answer; ``kept`` False when the checks refused it twice."""

    result: CallResult
    parsed: WorkerOutput
    checks: list[str] = field(default_factory=list)
    kept: bool = True


class Calls:
    """Asks the session's roles; counts the worker calls made in this run."""

    def __init__(self, cfg: Config, fleet: Fleet, prompts: Mapping[str, Prompt]) -> None:
        self.cfg = cfg
        self.fleet = fleet
        self.prompts = prompts
        self.worker_calls = 0

    def client(self, role: str) -> SlotClient:
        return self.fleet[self.cfg.slots_for(role)[0].name]

    def messages(self, role: str, user: str) -> Messages:
        return chat(self.prompts[self.cfg.roles[role].prompt].text, user)

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
        return await client.chat(
            messages,
            role=role,
            json_schema=schema if client.slot.supports_json_schema else None,
            schema_name=name,
            temperature=answers.retry_temperature(sampling.temperature, retry),
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
        )

    async def plan(
        self, role: str, messages: Messages, task: str, max_subtasks: int
    ) -> tuple[Plan, str]:
        """The planner's plan after at most one repair round, else the one-subtask
        fallback plan; and why the last refused answer was refused ("" if none was)."""
        client = self.client(role)
        schema = plan_schema(max_subtasks)
        examples = self.examples("plan.md", role)
        reason = ""
        for round_ in range(2):  # the first answer, then one repair round
            result = await self.ask(role, client, messages, schema, "plan")
            try:
                return answers.plan_answer(result.text, max_subtasks, examples, task), reason
            except PlanInvalid as exc:
                reason = str(exc)
                log.info("plan invalid", round=round_ + 1, reason=reason)
                repair = self.prompts["plan_repair.md"].render(error=reason)
                messages = follow_up(messages, result.text, repair)
        return fallback_plan(task), reason

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
        for attempt in range(2):
            self.worker_calls += 1
            result = await self.ask(role, client, ask, WORKER_SCHEMA, "work", retry=attempt > 0)
            parsed, problem = answers.worker_answer(result)
            problem = problem or answers.problem(parsed.output, examples, allowed)
            if problem is None:
                return WorkAnswer(result, parsed, checks)
            checks.append(problem)
            log.info("worker answer rejected", subtask=sid, attempt=attempt + 1, problem=problem)
            ask = feedback(messages, result.text, problem)
        return WorkAnswer(result, parsed, checks, kept=False)

    async def merge(
        self, role: str, messages: Messages, examples: list[str], allowed: str, plain: str
    ) -> Integration:
        """The planner's merge; a merge that is empty or copies the prompt's example is
        asked again differently once, then replaced by ``plain`` (a plain merge)."""
        client = self.client(role)
        checks: list[str] = []
        ask = messages
        for attempt in range(2):
            result = await self.ask(
                role, client, ask, INTEGRATION_SCHEMA, "integration", retry=attempt > 0
            )
            merged = answers.integration_answer(result.text)
            if merged is None:
                checks.append(answers.NOT_JSON)
                break
            problem = answers.problem(merged.deliverable, examples, allowed)
            if problem is None:
                merged.checks, merged.fallback = checks, None
                return merged
            checks.append(problem)
            log.info("integration answer rejected", attempt=attempt + 1, problem=problem)
            ask = feedback(messages, result.text, problem)
        log.warning("integration fell back to a plain merge of the worker outputs", why=checks[-1])
        return Integration(deliverable=plain, checks=checks, fallback=checks[-1])
