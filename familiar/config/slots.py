"""Slots: backend deployments, and the slots file that lists them.

A slot is one OpenAI-compatible deployment: one or more replica URLs, a model name,
a runtime, and ``parallel`` -- the number of requests it serves at once, a hard cap.
API keys never live in the file: ``api_key_env`` names an environment variable.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from familiar.config.runtimes import DEFAULT, RUNTIMES
from familiar.errors import SlotsFileError
from familiar.logs import redact_url

if TYPE_CHECKING:
    from familiar.ledger import FleetSettings

    Runtime = str
else:
    #: the runtimes a slot may name: every entry of ``familiar.config.runtimes.RUNTIMES``
    Runtime = Literal[tuple(RUNTIMES)]
EMBEDDED = "embedded"
#: Runtimes known to honour ``response_format`` with ``json_schema``.
SCHEMA_RUNTIMES: frozenset[str] = frozenset(n for n, r in RUNTIMES.items() if r.json_schema)


class Slot(BaseModel):
    """One backend deployment. ``parallel`` is never exceeded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    url: tuple[str, ...]
    model: str
    runtime: Runtime = DEFAULT
    parallel: Annotated[int, Field(ge=1, le=4096)] = 1
    #: seats kept out of reach of translation batches, so an interactive session started
    #: while a batch runs gets one at once (0: a batch may fill the deployment)
    reserve: Annotated[int, Field(ge=0, le=4095)] = 0
    rps: Annotated[float, Field(gt=0)] | None = None
    #: bounds a whole request, connect to last byte (a trickling answer is cut off too)
    timeout_s: Annotated[float, Field(gt=0)] = 300.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    #: no byte for this long aborts the attempt (a hung server is noticed quickly)
    stall_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    api_key_env: str | None = None
    #: the longest ``Retry-After`` honoured (seconds); a server asking for longer gets one
    #: warning and the attempt counts as failed (normal backoff, no hour-long wait)
    max_retry_after_s: Annotated[float, Field(ge=0, le=86400)] = 120.0
    #: optional cap on generated tokens per request (small local models, tight contexts)
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    #: replica choice: "session" keeps a session's (an article's) requests on one replica,
    #: whose prefix cache serves what they share, unless it is much busier than the rest;
    #: "none": least outstanding requests only
    affinity: Literal["session", "none"] = "session"
    #: warm, then fan out: of requests that share a long prompt prefix (and affinity key)
    #: and start together, the first goes alone until its first token (familiar/client/warm.py)
    warm: bool = True
    #: prompt format for translation on this slot (default: plamo for PLaMo, else chat;
    #: ``fewshot`` suits base models that are not instruction-tuned)
    translate_format: Literal["plamo", "chat", "fewshot"] | None = None

    @field_validator("url", mode="before")
    @classmethod
    def _listify(cls, value: object) -> object:
        if isinstance(value, str):
            return (value,)
        return value

    @field_validator("url")
    @classmethod
    def _check_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("url must name at least one replica")
        for url in value:
            if url == EMBEDDED:
                continue
            shown = redact_url(url)
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"url {shown!r} must be http(s)://... or 'embedded'")
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 - raises ValueError for a port out of 0-65535
            except ValueError as exc:
                raise ValueError(f"url {shown!r}: {exc}") from None
            if not parts.hostname:
                raise ValueError(f"url {shown!r} has no host")
        if EMBEDDED in value and len(value) > 1:
            raise ValueError("'embedded' cannot be mixed with other replicas")
        return tuple(u.rstrip("/") for u in value)

    @model_validator(mode="after")
    def _check_credentials(self) -> Slot:
        self.api_key()  # a key with surrounding whitespace: refused when the file is read
        if self.api_key_env is not None:
            for url in self.url:
                if url != EMBEDDED and urlsplit(url).netloc.rpartition("@")[1]:
                    raise ValueError(
                        f"url {redact_url(url)!r} carries credentials (user:password@) and"
                        f" api_key_env names a key: use one or the other (the URL's"
                        " credentials would be sent as Basic auth instead of the key)"
                    )
        return self

    @model_validator(mode="after")
    def _check_reserve(self) -> Slot:
        if self.reserve and not self.embedded and self.reserve >= self.parallel:
            raise ValueError(
                f"reserve ({self.reserve}) must be less than parallel ({self.parallel}):"
                " a batch needs at least one seat"
            )
        return self

    @property
    def deployment(self) -> tuple[tuple[str, ...], str]:
        """What actually serves requests: the URLs plus the model. Slots naming the same
        deployment share its seats; several models behind one gateway URL are several."""
        return (self.url, self.model)

    def public(self) -> dict[str, object]:
        """The slot as records and events show it: URLs without userinfo, no key."""
        data = self.model_dump(mode="json")
        data["url"] = [redact_url(u) for u in self.url]
        return data

    @property
    def embedded(self) -> bool:
        return self.url == (EMBEDDED,)

    @property
    def supports_json_schema(self) -> bool:
        return RUNTIMES[self.runtime].json_schema

    def api_key(self) -> str | None:
        """The key from the named environment variable (never stored on the object).

        A value with surrounding whitespace or a line break (pasted from a file) is a
        ``SlotsFileError`` saying so: sent as it is, it fails as a bad key; trimmed
        silently, the variable would not hold what the server is told.
        """
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env) or None
        if value is not None and (value != value.strip() or "\n" in value or "\r" in value):
            raise SlotsFileError(
                f"slot {self.name!r}: the API key in ${self.api_key_env} has surrounding"
                ' whitespace or a line break; remove it (e.g. export VAR="$(cat file)")'
            )
        return value


def parse_fleet(data: dict[str, object], source: str) -> FleetSettings:
    """The ``[fleet]`` table of a slots file (the seat ledger's settings)."""
    from familiar.ledger import FleetSettings

    table = data.get("fleet", {})
    if not isinstance(table, dict):
        raise SlotsFileError(f"{source}: [fleet] must be a table")
    try:
        return FleetSettings(**table)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "fleet"
        raise SlotsFileError(f"{source}: [fleet] {where}: {err['msg']}") from None


def parse_slots(data: dict[str, object], source: str) -> dict[str, Slot]:
    """Validate the parsed TOML of a slots file."""
    table = data.get("slots")
    if not isinstance(table, dict) or not table:
        raise SlotsFileError(f"{source}: no [slots.<name>] tables found")
    unknown = set(data) - {"slots", "fleet"}
    if unknown:
        raise SlotsFileError(f"{source}: unknown top-level key(s): {', '.join(sorted(unknown))}")
    slots: dict[str, Slot] = {}
    for name, body in table.items():
        if not isinstance(body, dict):
            raise SlotsFileError(f"{source}: [slots.{name}] must be a table")
        try:
            slots[name] = Slot(name=name, **body)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or name
            raise SlotsFileError(f"{source}: [slots.{name}] {where}: {err['msg']}") from None
    return slots


def load_slots(path: Path) -> dict[str, Slot]:
    """Read and validate a slots file."""
    return load_slots_file(path)[0]


def load_slots_file(path: Path) -> tuple[dict[str, Slot], FleetSettings]:
    """Read and validate a slots file: its slots and its ``[fleet]`` settings."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SlotsFileError(f"slots file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SlotsFileError(f"cannot read slots file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SlotsFileError(f"{path}: invalid TOML: {exc}") from None
    return parse_slots(data, str(path)), parse_fleet(data, str(path))
