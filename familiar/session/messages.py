"""What a session sends, pure: the planner, worker, integration and translation prompts,
the follow-ups after a refused answer, and the plain merge of last resort.

A worker sees only its role prompt, the plan's goal and pinned decisions verbatim, its
own subtask, and the outputs of the subtasks it depends on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from familiar.plan import Plan, Subtask
from familiar.prompts import Prompt

Messages = list[dict[str, str]]


def bullets(items: Sequence[str], empty: str = "(none)") -> str:
    return "\n".join(f"- {i}" for i in items) if items else empty


def chat(system: str, user: str) -> Messages:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def transcript(messages: Messages) -> str:
    """The messages as one Markdown text (``subtasks/<id>.prompt.md``)."""
    return "\n\n".join(f"## {m['role']}\n\n{m['content']}" for m in messages)


def follow_up(messages: Messages, answer: str, user: str) -> Messages:
    """The conversation so far, the model's answer, and a new user turn."""
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": user}]


def feedback(messages: Messages, answer: str, problem: str) -> Messages:
    """Ask again after a refused answer, saying why it was refused."""
    return follow_up(
        messages,
        answer,
        f"That answer cannot be used: {problem}. The example only shows"
        " the shape of an answer. Do the task above itself and answer again.",
    )


def planner_user(prompt: Prompt, task: str, max_subtasks: int, workers: Sequence[str]) -> str:
    hint = (
        'Mark about half the subtasks "hard" and half "easy" when both kinds of work exist.'
        if len(workers) > 1
        else ""
    )
    return prompt.render(task=task, max_subtasks=max_subtasks, worker_hint=hint)


def dependencies(plan: Plan, s: Subtask, outputs: Mapping[str, str]) -> str:
    """The outputs of the subtasks ``s`` depends on, and nothing else."""
    return (
        "\n\n".join(f"[{d}] {plan.subtask(d).title}:\n{outputs[d]}" for d in s.depends_on)
        or "(none)"
    )


def revision_note(revision: str | None) -> str:
    return (
        f"\nA reviewer found your previous output broke a decision: {revision}\n"
        "Fix that and keep everything else.\n"
        if revision
        else ""
    )


def worker_user(
    prompt: Prompt, plan: Plan, s: Subtask, deps: str, revision: str | None = None
) -> str:
    return prompt.render(
        goal=plan.goal,
        decisions=bullets(plan.decisions),
        subtask_id=s.id,
        title=s.title,
        instructions=s.instructions,
        acceptance=s.acceptance or "(none)",
        dependencies=deps,
        revision=revision_note(revision),
    )


def worker_allowed(task: str, plan: Plan, s: Subtask, deps: str) -> str:
    """What a worker's answer may legitimately repeat: the task and this subtask's own
    inputs (never the rendered prompt, which holds the example itself)."""
    return "\n".join((task, s.title, s.instructions, s.acceptance, deps, *plan.decisions))


def merge_inputs(plan: Plan, outputs: Mapping[str, str]) -> str:
    """Every worker output in plan order, for the integrator."""
    return "\n\n".join(f"[{s.id}] {s.title}:\n{outputs[s.id]}" for s in plan.subtasks)


def integration_user(prompt: Prompt, plan: Plan, task: str, inputs: str) -> str:
    return prompt.render(
        goal=plan.goal, task=task, decisions=bullets(plan.decisions), outputs=inputs
    )


def integration_allowed(task: str, plan: Plan, inputs: str) -> str:
    return "\n".join((task, inputs, *plan.decisions))


def plain_merge(plan: Plan, outputs: Mapping[str, str]) -> str:
    """The worker outputs in plan order under their titles: the merge of last resort."""
    return "\n\n".join(f"## {s.title}\n\n{outputs[s.id].strip()}" for s in plan.subtasks)
