"""What per-subtask context saves: worker request sizes with each subtask's own files vs
every context file, and how much of each worker request is a prefix the session's
workers share byte for byte (what a server's prefix cache can serve).

The workspace is familiar's own ``familiar/session/`` package (real files); a plan of
``--subtasks`` subtasks, each needing ``--files-each`` of them, the largest file shared by
all. Requests are built by the same code a session uses (``session.messages``), so the
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
from familiar.session.context import gather
from familiar.session.prompts import load_prompt

REPO = Path(_common.__file__).resolve().parents[1]


def common_prefix(texts: list[str]) -> int:
    first, n = texts[0], len(min(texts, key=len))
    for i in range(n):
        if any(t[i] != first[i] for t in texts):
            return i
    return n


def requests(plan: Plan, context: object, own_files: bool) -> list[str]:
    prompt = load_prompt(REPO, "worker_task.md")
    system = (shipped_dir("prompts") / "naughty.md").read_text()
    out = []
    for s in plan.subtasks:
        sub = s if own_files else s.model_copy(update={"files": context.paths})  # type: ignore[attr-defined]
        files = msg.files_section(plan, sub, context)  # type: ignore[arg-type]
        user = msg.worker_user(prompt, plan, sub, "(none)", files=files, writes_files=True)
        out.append(json.dumps(msg.chat(system, user), ensure_ascii=False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subtasks", type=int, default=4)
    ap.add_argument("--files-each", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="a smoke run (2 subtasks)")
    args = ap.parse_args()
    n = 2 if args.tiny else args.subtasks
    ctx = gather(REPO, ["familiar/session"], 10**9, cwd=REPO)
    # the largest file is the one every subtask needs (a shared module), the rest apart
    paths = tuple(sorted(ctx.paths, key=lambda p: -ctx.file(p).bytes))
    plan = Plan(
        goal="Change the session package",
        decisions=("Keep every public name", "Type everything"),
        subtasks=tuple(
            Subtask(
                id=f"s{k + 1}",
                title=f"Part {k + 1}",
                instructions=f"Change part {k + 1}",
                difficulty="hard",
                files=(paths[0], *paths[1 + k * (args.files_each - 1) :][: args.files_each - 1]),
            )
            for k in range(n)
        ),
    )
    total = sum(f.bytes for f in ctx.included)
    print(
        f"context: {len(paths)} files, {total:,} bytes; {n} subtasks, {args.files_each} files each"
    )
    rows: list[list[object]] = []
    for label, own in (("each subtask's own files", True), ("every context file", False)):
        texts = requests(plan, ctx, own)
        mean = sum(len(t.encode()) for t in texts) / len(texts)
        shared = len(texts[0][: common_prefix(texts)].encode())
        rows.append([label, f"{mean:,.0f}", f"{shared:,}", f"{shared / mean:.0%}"])
    head = ["requests built with", "bytes/request (mean)", "shared prefix", "share"]
    print(_common.table(head, rows))


if __name__ == "__main__":
    main()
