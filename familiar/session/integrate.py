"""The closing steps of a session. Integrate: the planner-kind role merges the workers'
outputs (with the files they wrote), the pinned decisions checked; one bounded revision
round for the subtasks that broke a decision, then a final merge (a single subtask
without decisions is its own deliverable). Translate: the deliverable in the requested
language, by the translator-kind role. Each result is written into the session
directory as soon as it is known (a resumed session reads it back)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from familiar.config.workspace import Config
from familiar.dispatch import Pool
from familiar.errors import AnswerRejected, ConfigError
from familiar.lang import NAMES
from familiar.plan import Integration, Plan
from familiar.routing import revising_role, translator_role
from familiar.session import messages as msg
from familiar.session.calls import Calls
from familiar.session.prompts import Prompt
from familiar.session.store import SessionStore, SubtaskRecord
from familiar.session.view import SessionView
from familiar.session.worker import SubtaskWorker
from familiar.session.workspace import WorkspaceSteps, subtask_files

__all__ = ["Done", "Integrator"]

Done = dict[str, SubtaskRecord]


class Integrator:
    """Merges one session's outputs (``integrate``) and puts the deliverable in the
    requested language (``translate``)."""

    def __init__(
        self,
        *,
        planner: str,
        task: str,
        prompts: dict[str, Prompt],
        calls: Calls,
        store: SessionStore,
        view: SessionView,
        worker: SubtaskWorker,
        workspace: WorkspaceSteps | None,
        pools: Callable[[], list[Pool]],
        step: Callable[..., None],
    ) -> None:
        self.planner, self.task, self.prompts = planner, task, prompts
        self.calls, self.store, self.view, self.worker = calls, store, view, worker
        self.workspace, self.pools, self.step = workspace, pools, step

    async def integrate(self, plan: Plan, done: Done) -> str:
        """The planner's merge, one bounded revision round for broken decisions, then a
        final merge; a single subtask without decisions is its own deliverable."""
        recorded = self.store.read_deliverable()
        if recorded is not None:
            return recorded
        if len(plan.subtasks) == 1 and not plan.decisions:
            deliverable = done[plan.subtasks[0].id].output
            self.store.save_integration({"deliverable": deliverable, "violations": [], "rounds": 0})
            return deliverable
        self.view.step("integrating", self.planner)
        integration = await self.merge(plan, done)
        rounds = 1
        to_revise = {v.subtask_id: v for v in integration.violations if v.subtask_id in done}
        unrevised: dict[str, str] = {}  # subtask -> why its revision was refused
        if to_revise:  # one bounded revision round, then a final merge
            self.view.step("revising", ", ".join(sorted(to_revise)))
            pools = {p.role: p for p in self.pools()}
            for sid, violation in sorted(to_revise.items()):
                pool = pools[revising_role(done[sid].role, tuple(pools))]
                note = msg.decision_note(violation.decision, violation.explanation)
                try:
                    done[sid] = await self.worker.run(plan, plan.subtask(sid), pool, done, note)
                except AnswerRejected as exc:  # the first output stays (it passed its checks);
                    unrevised[sid] = str(exc)  # the final merge sees the violation again
            integration = await self.merge(plan, done)
            rounds = 2
        revised = sorted(set(to_revise) - set(unrevised))
        record: dict[str, Any] = {**integration.model_dump(), "rounds": rounds, "revised": revised}
        if unrevised:
            record["unrevised"] = unrevised
        self.store.save_integration(record)
        self.step(
            "integrate",
            rounds=rounds,
            revised=revised,
            checks=integration.checks,
            fallback=integration.fallback,
        )
        return integration.deliverable

    async def merge(self, plan: Plan, done: Done) -> Integration:
        """One merge by the planner-kind role (constrained; a plain merge as fallback)."""
        outputs = {s.id: with_files(done[s.id]) for s in plan.subtasks}
        inputs = msg.merge_inputs(plan, outputs)
        user = msg.integration_user(self.prompts["integrate.md"], plan, self.task, inputs)
        if self.workspace is not None:
            user += msg.files_note(self.workspace.merged(plan, done).conflicts)
        return await self.calls.merge(
            self.planner,
            self.calls.messages(self.planner, user),
            self.calls.examples("integrate.md", self.planner),
            msg.integration_allowed(self.task, plan, inputs),
            msg.plain_merge(plan, {s.id: done[s.id].output for s in plan.subtasks}),
        )

    async def translate(self, text: str, cfg: Config, task_lang: str, lang: str) -> str:
        """The deliverable in ``lang`` (the translator-kind role): recorded, else asked;
        never a cut or empty translation as the final result."""
        recorded = self.store.read_translation(lang)
        if recorded is not None:
            return recorded
        role = translator_role(cfg)
        if role is None:
            raise ConfigError("the result's language differs but no translator role is active")
        self.view.step("translating", role)
        user = self.prompts["translate_result.md"].render(
            source_lang=NAMES[task_lang], target_lang=NAMES[lang], text=text
        )
        client = self.calls.client(role)
        messages = self.calls.messages(role, user)
        result = await self.calls.ask(role, client, messages, None, "translation")
        text = result.text.strip()
        if result.finish_reason == "length" or not text:  # never a cut result as final
            why = "cut off at max_tokens" if text else "empty"
            raise AnswerRejected(
                f"the translation into {NAMES[lang]} was {why}; the untranslated result"
                f" is kept in integration.json (raise the translator's max_tokens and resume)"
            )
        self.store.save_translation(lang, text, task_lang)
        self.step("translate", to=lang)
        return text


def with_files(record: SubtaskRecord) -> str:
    """A worker's output as the integrator sees it: the text, then the files it wrote."""
    if not record.files:
        return record.output
    return f"{record.output}\n\nFiles written:\n\n{msg.written(subtask_files(record))}"
