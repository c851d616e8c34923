"""What a person sees while a session runs: a live rich view, or plain lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from familiar.plan import Plan
    from familiar.seats import SeatsStatistics

#: What the live view polls: a seats snapshot per deployment (named by its slots).
SeatsProbe = Callable[[], Mapping[str, "SeatsStatistics"]]


class SessionView(Protocol):
    def step(self, name: str, detail: str) -> None: ...
    def show_plan(self, plan: Plan) -> None: ...
    def subtask(self, sid: str, state: str, role: str | None, slot: str | None) -> None: ...


class PlainView:
    """One line per event, for logs and pipes (stderr, so stdout stays the result)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()

    def _line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", file=self.stream, flush=True)

    def step(self, name: str, detail: str) -> None:
        self._line(f"{name} ({detail})")

    def show_plan(self, plan: Plan) -> None:
        kind = "fallback plan" if plan.fallback else "plan"
        self._line(f"{kind}: {len(plan.subtasks)} subtask(s), {len(plan.decisions)} decision(s)")
        for s in plan.subtasks:
            deps = f" after {', '.join(s.depends_on)}" if s.depends_on else ""
            self._line(f"  {s.id} [{s.difficulty}] {s.title}{deps}")

    def subtask(self, sid: str, state: str, role: str | None, slot: str | None) -> None:
        where = f" on {role}@{slot}" if slot else (f" for {role}" if role else "")
        self._line(f"subtask {sid} {state}{where}")


class LiveView:
    """A rich Live table: plan, subtasks by slot and state, seats in use per deployment.

    ``seats`` is polled on every refresh for frozen :class:`~familiar.seats.SeatsStatistics`
    snapshots; the view never reads a limiter's live counters.
    """

    def __init__(self, seats: SeatsProbe) -> None:
        from rich.console import Console
        from rich.live import Live

        self._seats = seats
        self._plan: Plan | None = None
        self._states: dict[str, tuple[str, str | None, str | None]] = {}
        self._step = "starting"
        self._console = Console(stderr=True)
        self._live = Live(
            console=self._console,
            refresh_per_second=4,
            get_renderable=self._render,
            transient=False,
        )

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def step(self, name: str, detail: str) -> None:
        self._step = f"{name} ({detail})"

    def show_plan(self, plan: Plan) -> None:
        self._plan = plan

    def subtask(self, sid: str, state: str, role: str | None, slot: str | None) -> None:
        self._states[sid] = (state, role, slot)

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        parts: list[Any] = [f"[bold]{self._step}[/]"]
        if self._plan is not None:
            table = Table("id", "difficulty", "title", "state", "role@slot", expand=False)
            for s in self._plan.subtasks:
                state, role, slot = self._states.get(s.id, ("waiting", None, None))
                colour = {"done": "green", "running": "yellow", "failed": "red"}.get(state, "")
                where = f"{role}@{slot}" if slot else (role or "")
                table.add_row(
                    s.id,
                    s.difficulty,
                    s.title[:50],
                    f"[{colour}]{state}[/]" if colour else state,
                    where,
                )
            parts.append(table)
        seats = self._seats()
        if seats:
            parts.append(
                "seats in use: "
                + "  ".join(
                    f"{name} {stats.in_use}/{stats.total}"
                    + (
                        f" ({stats.ledger_waiting} waiting for other processes)"
                        if stats.ledger_waiting
                        else ""
                    )
                    for name, stats in sorted(seats.items())
                )
            )
        return Group(*parts)
