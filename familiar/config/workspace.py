"""Configuration: workspace, state home, role files, slots file -- resolved once.

Lookup rules:

* workspace: ``--workspace DIR``, else the nearest directory upward holding CLAUDE.md,
  else the current directory;
* slots file: ``--slots PATH``, else ``$FAMILIAR_SLOTS``, else ``<workspace>/slots.toml``,
  else the shipped ``roles/slots.toml``;
* role files and prompts: ``<workspace>/roles/<file>`` and ``<workspace>/prompts/<file>``
  override the shipped defaults file by file; a role file of another name
  (``<workspace>/roles/toddler.toml``) adds a role, which does what its ``kind`` says;
* state (sessions, caches, spill files): ``$FAMILIAR_HOME``, else
  ``<workspace>/.familiar``.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from familiar.config import claude_md
from familiar.config.roles import (
    PRESETS,
    ROLES,
    SLOT_PATTERN,
    WORKER,
    Kind,
    RoleConfig,
    parse_role_string,
)
from familiar.config.slots import Slot, load_slots_file
from familiar.errors import ConfigError, RoleFileError, SlotsFileError, StateError
from familiar.ledger import FleetSettings

_PKG = Path(__file__).resolve().parents[1]  # the familiar package
DEFAULT_ROLE_STRING = "standard"


def shipped_dir(kind: Literal["roles", "prompts"]) -> Path:
    """The defaults shipped with familiar (inside the wheel, or the source checkout)."""
    inside = _PKG / "data" / kind
    return inside if inside.is_dir() else _PKG.parent / kind


def overlay_path(workspace: Path, kind: Literal["roles", "prompts"], name: str) -> Path:
    """``<workspace>/<kind>/<name>`` when it exists, else the shipped file."""
    own = workspace / kind / name
    return own if own.is_file() else shipped_dir(kind) / name


class Sampling(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    max_tokens: Annotated[int, Field(ge=1)] = 1024


class RoleSpec(BaseModel):
    """The contents of ``roles/<role>.toml``. ``kind`` decides what the role does: a
    ``planner`` plans and integrates, a ``worker`` runs subtasks (those of the
    difficulties it ``takes`` are queued for it; it stands in for any other worker), a
    ``translator`` translates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Kind
    description: str = ""
    prompt: str
    default_slot: str
    #: the subtask difficulties queued for this worker (the first worker taking one gets it)
    takes: tuple[Literal["hard", "easy"], ...] = ()
    sampling: Sampling = Sampling()

    @model_validator(mode="after")
    def _takes_only_workers(self) -> RoleSpec:
        if self.takes and self.kind != WORKER:
            raise ValueError(f"takes: only a worker takes subtasks, not a {self.kind}")
        return self


def load_role(workspace: Path, role: str) -> RoleSpec:
    path = overlay_path(workspace, "roles", f"{role}.toml")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RoleFileError(f"role file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RoleFileError(f"{path}: {exc}") from None
    try:
        spec = RoleSpec(**data.get("role", {}), sampling=Sampling(**data.get("sampling", {})))
    except (ValidationError, TypeError) as exc:
        raise RoleFileError(f"{path}: {_first_error(exc)}") from None
    if spec.name != role:
        raise RoleFileError(f"{path}: name is {spec.name!r}, expected {role!r}")
    return spec


_ROLE_NAME = re.compile(SLOT_PATTERN)


def role_names(workspace: Path) -> tuple[str, ...]:
    """The roles a workspace knows: the shipped ones, then its own role files
    (``<workspace>/roles/<name>.toml`` with a name a role string can spell), by name."""
    own = workspace / "roles"
    try:
        found = [p.stem for p in own.glob("*.toml") if p.is_file()]
    except OSError:
        found = []
    extra = sorted(
        n
        for n in found
        if _ROLE_NAME.fullmatch(n)
        and n not in ROLES
        and n not in PRESETS
        and n != "x"
        and not n.startswith("slots")
    )
    return (*ROLES, *extra)


def load_roles(workspace: Path) -> dict[str, RoleSpec]:
    """Every known role's file (:func:`role_names`), read and checked."""
    return {r: load_role(workspace, r) for r in role_names(workspace)}


def role_kinds(specs: dict[str, RoleSpec]) -> dict[str, Kind]:
    return {name: spec.kind for name, spec in specs.items()}


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(exc)


def find_workspace(explicit: Path | None = None) -> Path:
    if explicit is not None:
        if not explicit.is_dir():
            raise ConfigError(f"workspace is not a directory: {explicit}")
        return explicit.resolve()
    return claude_md.find_workspace() or Path.cwd().resolve()


def state_home(workspace: Path) -> Path:
    env = os.environ.get("FAMILIAR_HOME")
    return Path(env).expanduser().resolve() if env else workspace / ".familiar"


def slots_path(workspace: Path, explicit: Path | None = None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get("FAMILIAR_SLOTS")
    if env:
        return Path(env).expanduser()
    own = workspace / "slots.toml"
    return own if own.is_file() else shipped_dir("roles") / "slots.toml"


@dataclass(frozen=True)
class Config:
    """Everything a command needs, validated: roles, their slots, paths."""

    workspace: Path
    home: Path
    claude_md: Path
    role_config: RoleConfig
    role_source: str  # "CLAUDE.md", "--roles", or "default"
    roles: dict[str, RoleSpec]
    slots_file: Path
    slots: dict[str, Slot]
    active_slots: dict[str, Slot] = field(default_factory=dict)
    fleet: FleetSettings = field(default_factory=FleetSettings)

    def slot_name(self, role: str, slot: str) -> str:
        """An assignment's slot, with the role file's ``default_slot`` for unbound roles."""
        return self.roles[role].default_slot if slot == role else slot

    def slots_for(self, role: str) -> list[Slot]:
        """The slots serving ``role`` in this configuration, in order."""
        return [
            self.slots[self.slot_name(a.role, a.slot)]
            for a in self.role_config.assignments
            if a.role == role
        ]


def load_config(
    workspace: Path | None = None,
    slots: Path | None = None,
    roles: str | None = None,
) -> Config:
    """Resolve and validate the whole configuration; raises ConfigError subclasses."""
    ws = find_workspace(workspace)
    md = ws / "CLAUDE.md"
    if roles is not None:
        text, source = roles, "--roles"
    else:
        if md.exists() and not md.is_file():
            raise StateError(
                f"{md} is not a regular file (a directory?); familiar reads its"
                " role line from a file named CLAUDE.md"
            )
        line = claude_md.read_role_line(md) if md.is_file() else None
        text, source = (line, "CLAUDE.md") if line is not None else (DEFAULT_ROLE_STRING, "default")
    specs = load_roles(ws)
    role_config = parse_role_string(text, role_kinds(specs))
    path = slots_path(ws, slots)
    all_slots, fleet = load_slots_file(path)
    active: dict[str, Slot] = {}
    for a in role_config.assignments:
        name = specs[a.role].default_slot if a.slot == a.role else a.slot
        if name not in all_slots:
            known = ", ".join(sorted(all_slots))
            raise SlotsFileError(
                f"role {a.role!r} is bound to slot {name!r}, which {path} does not define"
                f" (defined: {known})"
            )
        active[name] = all_slots[name]
    return Config(
        workspace=ws,
        home=state_home(ws),
        claude_md=md,
        role_config=role_config,
        role_source=source,
        roles=specs,
        slots_file=path,
        slots=all_slots,
        active_slots=active,
        fleet=fleet,
    )
