"""Role names and the role configuration string parser (pure, no I/O).

Grammar (case-insensitive; whitespace around tokens is optional unless noted)::

    role_string = preset | term , { separator , term } ;
    preset      = "full" | "standard" | "minimal" ;
    separator   = TIMES                    (* U+00D7 multiplication sign, spaces optional *)
                | WS , ( "x" | "X" ) , WS ; (* a standalone whitespace-delimited word *)
    term        = role , [ "@" , slot ] ;
    role        = "grandpa" | "naughty" | "kindergarten" | "translator" ;
    slot        = [a-z0-9] , { [a-z0-9_-] } ;  (* default: the role's own name *)

``x`` is also a letter, so it only separates when it stands alone (``naughty x translator``);
``TIMES`` (U+00D7) separates anywhere, even unspaced. Leading/trailing whitespace is ignored.

Validity: at least one worker role (naughty or kindergarten), or translator terms only.
A role may be repeated on *different* slots (``naughty@a x naughty@b``: both slots serve it),
never on the same slot. Every violation raises :class:`RoleStringError` with one line that
names the offending token.
"""

from __future__ import annotations

import difflib
import re
from typing import Final

from pydantic import BaseModel, ConfigDict, field_validator

from familiar.errors import RoleStringError

ROLES: Final = ("grandpa", "naughty", "kindergarten", "translator")
WORKER_ROLES: Final = ("naughty", "kindergarten")
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
    def _known_role(cls, value: str) -> str:
        if value not in ROLES:
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

    @property
    def roles(self) -> tuple[str, ...]:
        """The active role names, each once, in order of first appearance."""
        return tuple(dict.fromkeys(a.role for a in self.assignments))

    @property
    def workers(self) -> tuple[str, ...]:
        """The active worker roles (naughty / kindergarten), in order."""
        return tuple(r for r in self.roles if r in WORKER_ROLES)

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


def _help() -> str:
    return f"known roles: {', '.join(ROLES)}; presets: {', '.join(PRESETS)}"


def _tokenize(text: str) -> list[tuple[bool, str]]:
    """Split into ``(is_separator, text)`` tokens, keeping the original spelling."""
    tokens: list[tuple[bool, str]] = []
    for chunk in re.split(f"({TIMES})", text):
        if chunk == TIMES:
            tokens.append((True, chunk))
            continue
        tokens.extend((word.lower() == "x", word) for word in chunk.split())
    return tokens


def _check_layout(tokens: list[tuple[bool, str]], source: str) -> list[str]:
    """Enforce ``term (separator term)*``; return the terms."""
    if not tokens:
        raise RoleStringError(f"empty role string; {_help()}")
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


def _parse_term(token: str, pos: int, source: str) -> RoleAssignment:
    where = f"(term {pos} of {source!r})"
    role, at, slot = token.lower().partition("@")
    if not role:
        raise RoleStringError(f"missing role name before '@' in {token!r} {where}; {_help()}")
    if role in PRESETS:
        raise RoleStringError(
            f"preset {token!r} {where} must be used alone, not combined with other terms"
        )
    if role not in ROLES:
        raise RoleStringError(f"unknown role {token.partition('@')[0]!r} {where}; {_hint(role)}")
    if at and not _SLOT_RE.fullmatch(slot):
        raise RoleStringError(
            f"bad slot name {slot!r} in {token!r} {where}; a slot must match {SLOT_PATTERN}"
        )
    return RoleAssignment(role=role, slot=slot if at else role)


def _hint(role: str) -> str:
    if "x" in role and all(p in ROLES for p in role.split("x")):
        return f"did you mean {' x '.join(role.split('x'))!r}? {_help()}"
    close = difflib.get_close_matches(role, [*ROLES, *PRESETS], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? {_help()}" if close else _help()


def _check_semantics(assignments: list[RoleAssignment], source: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for pos, a in enumerate(assignments, 1):
        if (a.role, a.slot) in seen:
            raise RoleStringError(
                f"role {a.role!r} repeated on slot {a.slot!r} (terms {seen[a.role, a.slot]} "
                f"and {pos} of {source!r}); use role@slot to serve a role from several slots"
            )
        seen[a.role, a.slot] = pos
    roles = {a.role for a in assignments}
    if roles & set(WORKER_ROLES) or roles == {"translator"}:
        return
    culprit = "grandpa" if "grandpa" in roles else sorted(roles)[0]
    raise RoleStringError(
        f"{culprit!r} needs a worker role ({' or '.join(WORKER_ROLES)}) in {source!r}; "
        "only 'translator' may run without one"
    )


def parse_role_string(text: str) -> RoleConfig:
    """Parse and validate a role configuration string (or preset name)."""
    source = text.strip()
    expanded = PRESETS.get(source.lower(), source)
    terms = _check_layout(_tokenize(expanded), source)
    assignments = [_parse_term(tok, pos, source) for pos, tok in enumerate(terms, 1)]
    _check_semantics(assignments, source)
    return RoleConfig(source=source, assignments=tuple(assignments))


__all__ = [
    "PRESETS",
    "ROLES",
    "SEPARATOR",
    "SLOT_PATTERN",
    "WORKER_ROLES",
    "RoleAssignment",
    "RoleConfig",
    "parse_role_string",
]
