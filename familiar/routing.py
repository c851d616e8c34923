"""Role policy in one place: who plans, who gets which work, who may stand in for whom.

Routing is code, not an LLM: a ``hard`` subtask prefers the strong worker
(``naughty``), an ``easy`` one the fast worker (``kindergarten``); a worker pool with
nothing of its own steals from the role it may stand in for (:data:`STEALS`), so no pool
idles while interchangeable work waits. Translator and grandpa work is never stolen.
The planner is grandpa, else the strongest active worker (:data:`PLANNERS`). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from familiar.errors import ConfigError

if TYPE_CHECKING:
    from familiar.config import Config
    from familiar.plan import Difficulty

#: Planner candidates, best first: grandpa, else the strongest active worker.
PLANNERS: Final = ("grandpa", "naughty", "kindergarten")

#: The worker role each difficulty is routed to.
PREFERRED: Final[Mapping[str, str]] = {"hard": "naughty", "easy": "kindergarten"}

#: Which roles a role's pool may steal work from when it has none of its own.
STEALS: Final[Mapping[str, tuple[str, ...]]] = {
    "naughty": ("kindergarten",),
    "kindergarten": ("naughty",),
}


def preferred_role(difficulty: Difficulty) -> str:
    """The role a subtask of ``difficulty`` is queued for: hard -> naughty, easy ->
    kindergarten."""
    return PREFERRED[difficulty]


def takes_from(role: str, steals: Mapping[str, tuple[str, ...]] = STEALS) -> tuple[str, ...]:
    """The roles whose work a worker of ``role`` takes, in order: its own first, then the
    roles it may steal from."""
    return (role, *steals.get(role, ()))


def revising_role(recorded: str | None, active: Sequence[str]) -> str:
    """Who revises a subtask a reviewer found broke a decision: the role that wrote it
    while that role is active, else the first active worker role."""
    return recorded if recorded is not None and recorded in active else active[0]


def planner_role(cfg: Config) -> str:
    """The active role that plans and integrates; ConfigError when there is none."""
    for role in PLANNERS:
        if cfg.role_config.has(role):
            return role
    raise ConfigError(
        f"role configuration {cfg.role_config.canonical()!r} has no planner or worker role;"
        " familiar run needs naughty or kindergarten"
    )


def check_runnable(cfg: Config, task_lang: str, lang: str | None) -> None:
    """ConfigError unless the active roles can run a session: a planner, a worker, and a
    translator when the result's language differs from the task's."""
    planner_role(cfg)
    if not cfg.role_config.workers:
        raise ConfigError("familiar run needs a worker role (naughty or kindergarten)")
    if lang and lang != task_lang and not cfg.role_config.has("translator"):
        raise ConfigError(
            f"--lang {lang} differs from the task's language ({task_lang}) but"
            " the translator role is not active"
        )
