"""Role policy in one place: who plans, who gets which work, who may stand in for whom.

Routing is code, not an LLM, and it follows each role file's ``kind`` (and a worker's
``takes``), never a role's name: a subtask is queued for the first worker role that
``takes`` its difficulty (the shipped files: ``hard`` -> naughty, ``easy`` ->
kindergarten); a worker pool with nothing of its own steals from every other worker role,
so no pool idles while interchangeable work waits (a workspace's own worker, e.g. a
second fast one, gets work that way). Translator and planner work is never stolen. The
planner is the first planner role, else the strongest active worker: one taking ``hard``
work first. Pure.

:data:`PLANNERS`, :data:`PREFERRED` and :data:`STEALS` are the policy the shipped role
files give (a test checks they agree); a run derives its own from its configuration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from familiar.config.roles import PLANNER, TRANSLATOR, WORKER
from familiar.errors import ConfigError

if TYPE_CHECKING:
    from familiar.config.workspace import Config
    from familiar.plan import Difficulty


class _Spec(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def takes(self) -> tuple[str, ...]: ...


#: Planner candidates of the shipped roles, best first: grandpa, else the strongest worker.
PLANNERS: Final = ("grandpa", "naughty", "kindergarten")

#: The worker role each difficulty is routed to (the shipped role files' ``takes``).
PREFERRED: Final[Mapping[str, str]] = {"hard": "naughty", "easy": "kindergarten"}

#: Which roles a role's pool may steal work from when it has none of its own.
STEALS: Final[Mapping[str, tuple[str, ...]]] = {
    "naughty": ("kindergarten",),
    "kindergarten": ("naughty",),
}


def workers_of(specs: Mapping[str, _Spec]) -> tuple[str, ...]:
    """Every known worker role (active or not), in the configuration's order."""
    return tuple(name for name, spec in specs.items() if spec.kind == WORKER)


def preferences(specs: Mapping[str, _Spec]) -> dict[str, str]:
    """difficulty -> the first worker role that ``takes`` it."""
    out: dict[str, str] = {}
    for name in workers_of(specs):
        for difficulty in specs[name].takes:
            out.setdefault(difficulty, name)
    return out


def steals_of(specs: Mapping[str, _Spec]) -> dict[str, tuple[str, ...]]:
    """Each worker role -> every other worker role (whose work it may take)."""
    workers = workers_of(specs)
    return {w: tuple(o for o in workers if o != w) for w in workers}


def planners_of(specs: Mapping[str, _Spec]) -> tuple[str, ...]:
    """Planner candidates, best first: the planner roles, then workers taking ``hard``
    work, then the other workers."""
    workers = workers_of(specs)
    strong = tuple(w for w in workers if "hard" in specs[w].takes)
    planners = tuple(n for n, s in specs.items() if s.kind == PLANNER)
    return (*planners, *strong, *(w for w in workers if w not in strong))


def preferred_role(difficulty: Difficulty, cfg: Config | None = None) -> str:
    """The role a subtask of ``difficulty`` is queued for: the first worker taking it
    (shipped: hard -> naughty, easy -> kindergarten), else the first active worker."""
    if cfg is None:
        return PREFERRED[difficulty]
    role = preferences(cfg.roles).get(difficulty)
    return role if role is not None else cfg.role_config.workers[0]


def steals(cfg: Config) -> dict[str, tuple[str, ...]]:
    """The stealing policy of ``cfg``'s roles (:func:`steals_of`)."""
    return steals_of(cfg.roles)


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
    for role in planners_of(cfg.roles):
        if cfg.role_config.has(role):
            return role
    raise ConfigError(
        f"role configuration {cfg.role_config.canonical()!r} has no planner or worker role;"
        f" familiar run needs {_workers_hint(cfg)}"
    )


def translator_role(cfg: Config) -> str | None:
    """The first active translator role, or None."""
    found = cfg.role_config.of_kind(TRANSLATOR)
    return found[0] if found else None


def check_runnable(cfg: Config, task_lang: str, lang: str | None) -> None:
    """ConfigError unless the active roles can run a session: a planner, a worker, and a
    translator when the result's language differs from the task's."""
    planner_role(cfg)
    if not cfg.role_config.workers:
        raise ConfigError(f"familiar run needs a worker role ({_workers_hint(cfg)})")
    if lang and lang != task_lang and translator_role(cfg) is None:
        raise ConfigError(
            f"--lang {lang} differs from the task's language ({task_lang}) but"
            " the translator role is not active"
        )


def _workers_hint(cfg: Config) -> str:
    return " or ".join(workers_of(cfg.roles)) or "a worker role"
