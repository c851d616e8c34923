"""Role names and the role configuration string parser (pure, no I/O).

Grammar (case-insensitive; whitespace around tokens is optional unless noted)::

    role_string = preset | term , { separator , term } ;
    preset      = "full" | "standard" | "minimal" ;
    separator   = TIMES                    (* U+00D7 multiplication sign, spaces optional *)
                | WS , ( "x" | "X" ) , WS ; (* a standalone whitespace-delimited word *)
    term        = role , [ "@" , slot ] ;
    role        = a role familiar knows: the shipped "grandpa" | "naughty" |
                  "kindergarten" | "translator", or one of the workspace's role files ;
    slot        = [a-z0-9] , { [a-z0-9_-] } ;  (* default: the role's own name *)

``x`` is also a letter, so it only separates when it stands alone (``naughty x translator``);
``TIMES`` (U+00D7) separates anywhere, even unspaced. Leading/trailing whitespace is ignored.

Validity: at least one worker role (of kind ``worker``: naughty or kindergarten, or a
workspace's own), or translator roles only. What a role does follows its kind
(``planner``, ``worker``, ``translator``), read from its role file; the parser is told the
kinds (:data:`SHIPPED_KINDS` unless the caller knows the workspace's roles).
A role may be repeated on *different* slots (``naughty@a x naughty@b``: both slots serve it),
never on the same slot. Every violation raises :class:`RoleStringError` with one line that
names the offending token.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from familiar.errors import RoleStringError

Kind = Literal["planner", "worker", "translator"]
PLANNER: Final = "planner"
WORKER: Final = "worker"
TRANSLATOR: Final = "translator"
#: the shipped role files' kinds (``roles/*.toml``), for a parser told nothing else
SHIPPED_KINDS: Final[Mapping[str, Kind]] = MappingProxyType(
    {
        "grandpa": "planner",
        "naughty": "worker",
        "kindergarten": "worker",
        "translator": "translator",
    }
)
ROLES: Final = tuple(SHIPPED_KINDS)
WORKER_ROLES: Final = tuple(r for r, k in SHIPPED_KINDS.items() if k == WORKER)
PRESETS: Final[dict[str, str]] = {
    "full": "grandpa x naughty x kindergarten x translator",
    "standard": "naughty x kindergarten x translator",
    "minimal": "naughty x translator",
}
SEPARATOR: Final = " x "  # the canonical separator
TIMES: Final = "\u00d7"  # the multiplication sign, the other separator
_JOIN_HINT: Final = f"join terms with ' x ' or '{TIMES}'"

SLOT_PATTERN: Final = r"[a-z0-9][a-z0-9_-]*"
_SLOT_RE: Final = re.compile(SLOT_PATTERN)
_TERM_CHARS_RE: Final = re.compile(r"[^A-Za-z0-9@_-]")


class RoleAssignment(BaseModel):
    """One term of a role string: ``role`` served by backend ``slot``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str
    slot: str

    @field_validator("role")
    @classmethod
    def _known_role(cls, value: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get("kinds", SHIPPED_KINDS)
        if value not in known:
            raise ValueError(f"unknown role {value!r}")
        return value

    @field_validator("slot")
    @classmethod
    def _valid_slot(cls, value: str) -> str:
        if not _SLOT_RE.fullmatch(value):
            raise ValueError(f"bad slot name {value!r} (must match {SLOT_PATTERN})")
        return value

    def term(self) -> str:
        """The canonical term: ``role`` or ``role@slot`` when the slot is not the default."""
        return self.role if self.slot == self.role else f"{self.role}@{self.slot}"


class RoleConfig(BaseModel):
    """A parsed, validated role configuration string."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    assignments: tuple[RoleAssignment, ...]
    #: every known role's kind (the shipped ones unless the workspace adds its own)
    kinds: Mapping[str, Kind] = Field(default=SHIPPED_KINDS, repr=False)

    @property
    def roles(self) -> tuple[str, ...]:
        """The active role names, each once, in order of first appearance."""
        return tuple(dict.fromkeys(a.role for a in self.assignments))

    @property
    def workers(self) -> tuple[str, ...]:
        """The active worker roles (of kind ``worker``), in order."""
        return self.of_kind(WORKER)

    def of_kind(self, kind: Kind) -> tuple[str, ...]:
        """The active roles of ``kind``, in order of first appearance."""
        return tuple(r for r in self.roles if self.kinds.get(r) == kind)

    def has(self, role: str) -> bool:
        return any(a.role == role for a in self.assignments)

    def slots_for(self, role: str) -> tuple[str, ...]:
        """Every slot serving ``role`` in order (empty if the role is not active)."""
        return tuple(a.slot for a in self.assignments if a.role == role)

    def slot_for(self, role: str) -> str:
        """The slot of the first assignment of ``role``; KeyError if the role is not active."""
        for a in self.assignments:
            if a.role == role:
                return a.slot
        raise KeyError(role)

    def canonical(self) -> str:
        """E.g. ``naughty x kindergarten@fast x translator``; parses back to the same config."""
        return SEPARATOR.join(a.term() for a in self.assignments)


def _help(kinds: Mapping[str, Kind]) -> str:
    return f"known roles: {', '.join(kinds)}; presets: {', '.join(PRESETS)}"


def _tokenize(text: str) -> list[tuple[bool, str]]:
    """Split into ``(is_separator, text)`` tokens, keeping the original spelling."""
    tokens: list[tuple[bool, str]] = []
    for chunk in re.split(f"({TIMES})", text):
        if chunk == TIMES:
            tokens.append((True, chunk))
            continue
        tokens.extend((word.lower() == "x", word) for word in chunk.split())
    return tokens


def _check_layout(
    tokens: list[tuple[bool, str]], source: str, kinds: Mapping[str, Kind]
) -> list[str]:
    """Enforce ``term (separator term)*``; return the terms."""
    if not tokens:
        raise RoleStringError(f"empty role string; {_help(kinds)}")
    terms: list[str] = []
    for i, (is_sep, tok) in enumerate(tokens):
        prev_sep, prev = tokens[i - 1] if i else (True, "")
        if is_sep:
            if i == 0:
                raise RoleStringError(
                    f"dangling separator {tok!r} before the first term of {source!r}"
                )
            if prev_sep:
                raise RoleStringError(
                    f"doubled separator {tok!r} after term {len(terms)} {terms[-1]!r} of {source!r}"
                )
            if i == len(tokens) - 1:
                raise RoleStringError(
                    f"dangling separator {tok!r} after the last term {terms[-1]!r} of {source!r}"
                )
            continue
        _check_chars(tok, len(terms) + 1, source)
        if not prev_sep:
            raise RoleStringError(
                f"missing separator between {prev!r} and {tok!r} (terms {len(terms)} and "
                f"{len(terms) + 1} of {source!r}); {_JOIN_HINT}"
            )
        terms.append(tok)
    return terms


def _check_chars(token: str, pos: int, source: str) -> None:
    if bad := _TERM_CHARS_RE.search(token):
        raise RoleStringError(
            f"stray character {token[bad.start()]!r} in {token!r} (term {pos} of {source!r}); "
            f"a term is role or role@slot; {_JOIN_HINT}"
        )


def _parse_term(token: str, pos: int, source: str, kinds: Mapping[str, Kind]) -> RoleAssignment:
    where = f"(term {pos} of {source!r})"
    role, at, slot = token.lower().partition("@")
    if not role:
        raise RoleStringError(f"missing role name before '@' in {token!r} {where}; {_help(kinds)}")
    if role in PRESETS:
        raise RoleStringError(
            f"preset {token!r} {where} must be used alone, not combined with other terms"
        )
    if role not in kinds:
        raise RoleStringError(
            f"unknown role {token.partition('@')[0]!r} {where}; {_hint(role, kinds)}"
        )
    if at and not _SLOT_RE.fullmatch(slot):
        raise RoleStringError(
            f"bad slot name {slot!r} in {token!r} {where}; a slot must match {SLOT_PATTERN}"
        )
    return RoleAssignment.model_validate(
        {"role": role, "slot": slot if at else role}, context={"kinds": kinds}
    )


def _hint(role: str, kinds: Mapping[str, Kind]) -> str:
    if "x" in role and all(p in kinds for p in role.split("x")):
        return f"did you mean {' x '.join(role.split('x'))!r}? {_help(kinds)}"
    close = difflib.get_close_matches(role, [*kinds, *PRESETS], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? {_help(kinds)}" if close else _help(kinds)


def _check_semantics(
    assignments: list[RoleAssignment], source: str, kinds: Mapping[str, Kind]
) -> None:
    seen: dict[tuple[str, str], int] = {}
    for pos, a in enumerate(assignments, 1):
        if (a.role, a.slot) in seen:
            raise RoleStringError(
                f"role {a.role!r} repeated on slot {a.slot!r} (terms {seen[a.role, a.slot]} "
                f"and {pos} of {source!r}); use role@slot to serve a role from several slots"
            )
        seen[a.role, a.slot] = pos
    roles = {a.role for a in assignments}
    if any(kinds[r] == WORKER for r in roles) or all(kinds[r] == TRANSLATOR for r in roles):
        return
    planners = sorted(r for r in roles if kinds[r] == PLANNER)
    culprit = planners[0] if planners else sorted(roles)[0]
    workers = [r for r, k in kinds.items() if k == WORKER]
    raise RoleStringError(
        f"{culprit!r} needs a worker role ({' or '.join(workers)}) in {source!r}; "
        "only translator roles may run without one"
    )


def parse_role_string(text: str, kinds: Mapping[str, Kind] | None = None) -> RoleConfig:
    """Parse and validate a role configuration string (or preset name); ``kinds``: every
    known role's kind (default: the shipped roles, :data:`SHIPPED_KINDS`)."""
    kinds = SHIPPED_KINDS if kinds is None else MappingProxyType(dict(kinds))
    source = text.strip()
    expanded = PRESETS.get(source.lower(), source)
    terms = _check_layout(_tokenize(expanded), source, kinds)
    assignments = [_parse_term(tok, pos, source, kinds) for pos, tok in enumerate(terms, 1)]
    _check_semantics(assignments, source, kinds)
    return RoleConfig(source=source, assignments=tuple(assignments), kinds=kinds)


__all__ = [
    "PLANNER",
    "PRESETS",
    "ROLES",
    "SEPARATOR",
    "SHIPPED_KINDS",
    "SLOT_PATTERN",
    "TRANSLATOR",
    "WORKER",
    "WORKER_ROLES",
    "Kind",
    "RoleAssignment",
    "RoleConfig",
    "parse_role_string",
]
