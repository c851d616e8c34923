"""What a session sends, pure: the planner, worker, integration and translation prompts,
the follow-ups after a refused answer, and the plain merge of last resort.

A worker sees only its role prompt, the plan's goal and pinned decisions verbatim, its
own subtask, the workspace files its subtask names, and the outputs of the subtasks it
depends on.

Prefix-friendly order: what a session's prompts share comes first and is byte-identical
wherever it appears, so a server's prefix cache (vLLM, SGLang, llama-server) computes it
once. The workspace files lead the planner's request and every worker's (after the role's
system prompt), under one heading, in one session-wide order: a worker whose subtask needs
the planner's leading files finds them cached from the planner's request, and workers
needing the same files share them with each other; the instructions follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from familiar.plan import Plan, Subtask
from familiar.session.context import Context
from familiar.session.files import FileOut
from familiar.session.prompts import Prompt

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


def fenced(path: str, text: str) -> str:
    """A file shown to a model: its path, then its whole text in a fence longer than any
    backtick run inside it."""
    longest = max((len(run) for run in text.split("\n") if set(run) == {"`"}), default=0)
    fence = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"### {path}\n{fence}\n{body}{fence}"


def manifest(context: Context) -> str:
    """The context for the planner: every file's path, size and first lines."""
    rows = []
    for f in context.included:
        head = "\n".join(f"    {line}" for line in f.head().splitlines())
        rows.append(
            f"- {f.path} ({f.bytes:,} bytes, ~{f.tokens:,} tokens)" + (f"\n{head}" if head else "")
        )
    return "\n".join(rows)


def context_block(context: Context, paths: Sequence[str]) -> str:
    """The files a model is shown, whole, in the order given."""
    return "\n\n".join(fenced(p, context.file(p).text) for p in paths)


#: the heading of the workspace files at the start of a planner's or worker's request
FILES_HEAD = "Workspace files:\n\n"


def files_lead(context: Context, paths: Sequence[str]) -> str:
    """The files a request leads with: the same bytes in the planner's request and in a
    worker's, as far as they show the same files in the same order."""
    return f"{FILES_HEAD}{context_block(context, paths)}\n\n" if paths else ""


def planner_user(
    prompt: Prompt,
    task: str,
    max_subtasks: int,
    workers: Sequence[str],
    context: Context | None = None,
) -> str:
    hint = (
        'Mark about half the subtasks "hard" and half "easy" when both kinds of work exist.'
        if len(workers) > 1
        else ""
    )
    text = prompt.render(task=task, max_subtasks=max_subtasks, worker_hint=hint)
    if not context or not context.included:
        return text
    return (
        files_lead(context, context.paths)
        + "The workspace files above (path, size, first lines):\n"
        f"{manifest(context)}\n\n"
        'Give each subtask "files": the paths above it needs to see (only those).\n\n' + text
    )


def shared_order(plan: Plan, s: Subtask, context: Context) -> list[str]:
    """The files of ``s`` in a session-wide order: the most shared first, then the
    context's order (the planner's), so workers' requests share the longest possible
    prefix with each other, and with the planner's when they need its leading files."""
    order = {p: i for i, p in enumerate(context.paths)}
    users = {p: sum(p in t.files for t in plan.subtasks) for p in s.files}
    return sorted((p for p in s.files if p in order), key=lambda p: (-users[p], order[p]))


def files_section(plan: Plan, s: Subtask, context: Context | None) -> str:
    """The workspace files a worker's request leads with ("" when it needs none)."""
    if not context or not s.files:
        return ""
    return files_lead(context, shared_order(plan, s, context))


def dependencies(plan: Plan, s: Subtask, outputs: Mapping[str, str]) -> str:
    """The outputs of the subtasks ``s`` depends on, and nothing else."""
    return (
        "\n\n".join(f"[{d}] {plan.subtask(d).title}:\n{outputs[d]}" for d in s.depends_on)
        or "(none)"
    )


def revision_note(revision: str | None) -> str:
    """A reviser's note in the worker prompt (see :func:`decision_note`)."""
    return f"\n{revision}\n" if revision else ""


def decision_note(decision: str, explanation: str) -> str:
    """What a worker is told when the integrator found a decision broken."""
    return (
        f"A reviewer found your previous output broke a decision: {decision}: {explanation}\n"
        "Fix that and keep everything else."
    )


FILES_ASK = (
    'You may also write files: "files" lists whole files (a "path" relative to the'
    ' workspace and the complete "content"), or is empty; "output" then says briefly'
    " what the files do."
)


def worker_user(
    prompt: Prompt,
    plan: Plan,
    s: Subtask,
    deps: str,
    revision: str | None = None,
    *,
    files: str = "",
    writes_files: bool = False,
) -> str:
    """The worker's request. What a session's requests share comes first (the workspace
    files, most shared first; then the goal and pinned decisions), so a server's prefix
    cache can serve it."""
    text = prompt.render(
        goal=plan.goal,
        decisions=bullets(plan.decisions),
        files=files,
        subtask_id=s.id,
        title=s.title,
        instructions=s.instructions,
        acceptance=s.acceptance or "(none)",
        dependencies=deps,
        revision=revision_note(revision),
    )
    if files and "files" not in prompt.fields:  # a workspace's own prompt without {files}
        text = files + text
    return text + ("\n" + FILES_ASK if writes_files else "")


def written(files: Sequence[FileOut]) -> str:
    """Files a worker wrote, shown to the integrator or back to the worker."""
    return "\n\n".join(fenced(f.path, f.content) for f in files)


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


def files_note(conflicts: Mapping[str, Sequence[str]]) -> str:
    """What the integrator is told about the workers' files: "files" is for the paths
    several workers wrote (one merged, whole version each), else empty."""
    if not conflicts:
        return '\n"files": answer with an empty list (the workers\' files are kept as they are).'
    listed = "\n".join(f"- {p} (written by {', '.join(w)})" for p, w in sorted(conflicts.items()))
    return (
        "\nSeveral workers wrote the same file:\n"
        f"{listed}\n"
        '"files": give one merged, whole version of each of those paths.'
    )
