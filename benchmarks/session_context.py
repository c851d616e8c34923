"""What per-subtask context saves: worker request sizes with each subtask's own files vs
every context file, and how much of each worker request is a prefix the session's
workers share byte for byte, and a prefix it shares with the planner's request (the
planner being the same role, as when no grandpa is active): what a server's prefix cache
can serve.

The workspace is familiar's own ``familiar/session/`` package (real files); a plan of
``--subtasks`` subtasks, each needing ``--files-each`` of them, one file shared by all:
the largest, or the context's first (the file the planner's request leads with).
Requests are built by the same code a session uses (``session.messages``), so the
figures are exact bytes, not estimates.

    python benchmarks/session_context.py [--subtasks 4] [--files-each 2] [--tiny]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _common  # puts the repo on sys.path

from familiar.config.workspace import shipped_dir
from familiar.plan import Plan, Subtask
from familiar.session import messages as msg
from familiar.session.context import Context, gather
from familiar.session.prompts import load_prompt

REPO = Path(_common.__file__).resolve().parents[1]
SYSTEM = (shipped_dir("prompts") / "naughty.md").read_text()


def common_prefix(texts: list[str]) -> int:
    first, n = texts[0], len(min(texts, key=len))
    for i in range(n):
        if any(t[i] != first[i] for t in texts):
            return i
    return n


def requests(plan: Plan, context: Context, own_files: bool) -> list[str]:
    prompt = load_prompt(REPO, "worker_task.md")
    out = []
    if not own_files:  # every subtask shown every file
        every = tuple(s.model_copy(update={"files": context.paths}) for s in plan.subtasks)
        plan = plan.model_copy(update={"subtasks": every})
    for s in plan.subtasks:
        files = msg.files_section(plan, s, context)
        user = msg.worker_user(prompt, plan, s, "(none)", files=files, writes_files=True)
        out.append(json.dumps(msg.chat(SYSTEM, user), ensure_ascii=False))
    return out


def planner_request(context: Context) -> str:
    user = msg.planner_user(load_prompt(REPO, "plan.md"), "Change it", 4, ["naughty"], context)
    return json.dumps(msg.chat(SYSTEM, user), ensure_ascii=False)


def make_plan(shared: str, rest: list[str], n: int, each: int) -> Plan:
    return Plan(
        goal="Change the session package",
        decisions=("Keep every public name", "Type everything"),
        subtasks=tuple(
            Subtask(
                id=f"s{k + 1}",
                title=f"Part {k + 1}",
                instructions=f"Change part {k + 1}",
                difficulty="hard",
                files=(shared, *rest[k * (each - 1) :][: each - 1]),
            )
            for k in range(n)
        ),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subtasks", type=int, default=4)
    ap.add_argument("--files-each", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="a smoke run (2 subtasks)")
    args = ap.parse_args()
    n = 2 if args.tiny else args.subtasks
    ctx = gather(REPO, ["familiar/session"], 10**9, cwd=REPO)
    by_size = sorted(ctx.paths, key=lambda p: -ctx.file(p).bytes)
    total = sum(f.bytes for f in ctx.included)
    print(
        f"context: {len(ctx.paths)} files, {total:,} bytes (the planner's request leads with"
        f" {ctx.paths[0]}); {n} subtasks, {args.files_each} files each, one shared by all"
    )
    planner = planner_request(ctx)
    rows: list[list[object]] = []
    for name, shared in (("the largest", by_size[0]), ("the context's first", ctx.paths[0])):
        plan = make_plan(shared, [p for p in by_size if p != shared], n, args.files_each)
        for label, own in (("each subtask's own files", True), ("every context file", False)):
            texts = requests(plan, ctx, own)
            mean = sum(len(t.encode()) for t in texts) / len(texts)
            among = len(texts[0][: common_prefix(texts)].encode())
            with_planner = sum(len(t[: common_prefix([t, planner])].encode()) for t in texts) / len(
                texts
            )
            rows.append(
                [
                    f"{shared} ({name})",
                    label,
                    f"{mean:,.0f}",
                    f"{among:,} ({among / mean:.0%})",
                    f"{with_planner:,.0f} ({with_planner / mean:.0%})",
                ]
            )
    head = [
        "file all need",
        "requests built with",
        "bytes/request (mean)",
        "shared by the workers",
        "shared with the planner's (mean)",
    ]
    print(_common.table(head, rows))


if __name__ == "__main__":
    main()
