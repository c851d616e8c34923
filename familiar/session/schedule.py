"""Dependency release, pure: which subtasks may start now, which must wait, which are
skipped because something they depend on failed. No I/O, no clock.

The session calls :func:`schedule` whenever a result comes back: a subtask is ready when
every subtask it depends on is done; a failed subtask marks everything that depends on it,
directly or not, ``skipped: depends on failed <id>`` (naming the first failure in order).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from familiar.plan import Plan, Subtask


@dataclass(frozen=True)
class Schedule:
    #: submit these now, in plan order
    ready: tuple[Subtask, ...]
    #: not yet: a dependency is still queued, running or waiting itself
    waiting: tuple[str, ...]
    #: newly skipped (not among the failed ids given): id -> reason
    skipped: Mapping[str, str]


def skip_reason(failed_id: str) -> str:
    return f"skipped: depends on failed {failed_id}"


def schedule(
    plan: Plan,
    done: Collection[str],
    failed: Collection[str],
    in_flight: Collection[str],
) -> Schedule:
    """The next step of a fan-out.

    ``done``: ids with a result; ``failed``: ids that failed or were skipped, in the order
    they did; ``in_flight``: ids submitted whose result has not come back.
    """
    skipped: dict[str, str] = {}
    for fid in failed:
        for dep in sorted(plan.dependents(fid)):
            if dep not in failed:
                skipped.setdefault(dep, skip_reason(fid))
    finished = set(done)
    ready: list[Subtask] = []
    waiting: list[str] = []
    for s in plan.subtasks:
        if s.id in finished or s.id in failed or s.id in skipped or s.id in in_flight:
            continue
        if finished.issuperset(s.depends_on):
            ready.append(s)
        else:
            waiting.append(s.id)
    return Schedule(tuple(ready), tuple(waiting), skipped)
