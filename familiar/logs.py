"""structlog set-up: JSON or console lines on stderr, correlation id bound, secrets masked.

structlog is imported by :func:`configure` only: the masking helpers here are used all over
familiar (records, errors, telemetry), and ``import structlog`` pulls in ``rich``, which
``familiar --help`` should not pay for.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from familiar.context import correlation_id
from familiar.errors import ConfigError

if TYPE_CHECKING:
    import structlog

#: the accepted log levels, least to most severe (``--log-level``, ``FAMILIAR_LOG_LEVEL``)
LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
_NUMERIC = {"debug": 10, "info": 20, "warning": 30, "error": 40}

_SECRET_KEYS = re.compile(r"(api[_-]?key|authorization|token|secret|password)", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{6,}")
_SK = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")
# in free text only credentials are hidden: ``user:password@``, any userinfo of a NATS
# URL (``nats://TOKEN@host``: NATS takes a lone token), and a lone userinfo that looks like
# a token (16+ characters: ``https://ghp_...@host``); ``ssh://git@host`` is a user name.
# A configured URL's token is also registered as a secret and masked by value.
_PASSWORD_INFO = re.compile(
    r"(?i)\b([a-z][a-z0-9+.-]*://)"
    r"(?:[^/@\s:]*:[^/@\s]*|(?<=nats://)[^/@\s]+|(?<=tls://)[^/@\s]+|(?<=wss://)[^/@\s]+"
    r"|(?<=ws://)[^/@\s]+|[^/@\s:]{16,})@"
)
# the Basic-auth form of URL credentials (an HTTP client sends ``user:pw@`` that way)
_BASIC = re.compile(r"(?i)(Basic\s+)[A-Za-z0-9+/=_-]{6,}")
#: secret values known to this process (configured API keys, URL passwords), longest first
_SECRETS: list[str] = []


def register_secret(value: str | None) -> None:
    """Remember a secret's actual value, so that :func:`mask` hides it wherever it appears.

    Called with every configured API key and every password found in a URL; values shorter
    than 4 characters are ignored (masking them would mangle ordinary text).
    """
    if value and len(value) >= 4 and value not in _SECRETS:
        _SECRETS.append(value)
        _SECRETS.sort(key=len, reverse=True)


def register_url_secrets(url: str | None) -> None:
    """Register the credentials of ``url``'s userinfo: the password or lone token, as
    written and percent-decoded, and the ``base64(user:password)`` an HTTP client sends
    for them as Basic auth (with and without padding)."""
    if not url or "@" not in url:
        return
    import base64
    from urllib.parse import unquote, urlsplit

    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return
    userinfo = parts.netloc.rpartition("@")[0]
    if not userinfo:
        return
    user, _, password = userinfo.partition(":")
    for value in (password or user, unquote(password or user)):
        register_secret(value)
    basic = f"{unquote(user)}:{unquote(password)}".encode()
    encoded = base64.b64encode(basic).decode()
    register_secret(encoded)
    register_secret(encoded.rstrip("="))


def redact_url(url: str) -> str:
    """``url`` without its userinfo (``http://user:pw@host`` -> ``http://host``)."""
    return _USERINFO.sub(r"\1", url) if "@" in url else url


def mask(text: str) -> str:
    """Hide known secret values, bearer and Basic credentials, ``sk-...`` keys, URL
    passwords and tokens."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    if "@" in text:
        text = _PASSWORD_INFO.sub(r"\1", text)
    if "asic" in text:
        text = _BASIC.sub(r"\1***", text)
    if "sk-" not in text and "earer" not in text:  # the common case: nothing to hide
        return text
    return _SK.sub("sk-***", _BEARER.sub(r"\1***", text))


def mask_any(value: Any) -> Any:
    """:func:`mask` applied to every string inside ``value`` (dicts, lists, tuples)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: mask_any(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_any(v) for v in value]
    return value


def _add_correlation_id(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    cid = correlation_id.get()
    if cid is not None:
        event.setdefault("correlation_id", cid)
    return event


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and not key.endswith("_env"):
            event[key] = "***"
        else:
            event[key] = mask_any(value)
    return event


#: a console log line longer than this is folded (the whole event goes to the details log)
FOLD_AT = 300
#: where folded events are written whole (JSON lines); set by :func:`set_details_log`
_DETAILS: list[Path] = []


def set_details_log(path: Path | None) -> None:
    """Where :func:`_fold` writes long events whole (``FAMILIAR_HOME/logs/details.jsonl``,
    set when a command's configuration is loaded); None: nowhere (nothing is folded)."""
    _DETAILS[:] = [] if path is None else [path]


def _shorten(value: Any, limit: int = 80) -> Any:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fold(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A console event longer than :data:`FOLD_AT` becomes one short line: its fields
    shortened, and ``details=`` the file where the whole event (JSON) was appended. When
    it cannot be written there, the event stays whole: nothing is lost."""
    if not _DETAILS or len(repr(dict(event))) <= FOLD_AT:
        return event
    import json

    path = _DETAILS[0]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(dict(event), default=repr, ensure_ascii=False) + "\n")
    except OSError:
        return event
    keep = {"event", "level", "timestamp", "correlation_id"}
    for key, value in list(event.items()):
        if key not in keep:
            event[key] = _shorten(value, 40)
    event["event"] = _shorten(event.get("event", ""), 120)
    event["details"] = str(path)
    return event


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    """A logger on whatever ``sys.stderr`` is now (tests and tools swap it)."""
    import structlog

    return structlog.PrintLogger(sys.stderr)


def level_number(name: str, source: str = "--log-level") -> int:
    """The numeric level of ``name`` (one of :data:`LEVELS`, any case); a
    :class:`ConfigError` naming ``source`` otherwise."""
    numeric = _NUMERIC.get(name.strip().lower())
    if numeric is None:
        raise ConfigError(f"{source}: {name!r} is not one of {', '.join(LEVELS)}")
    return numeric


def use_colour(stream: IO[str], env: MutableMapping[str, str] | None = None) -> bool:
    """Whether to colour what goes to ``stream``: never when ``NO_COLOR`` is set and not
    empty (no-color.org) or ``TERM=dumb``; always when ``FORCE_COLOR`` is set and not
    empty; else only on a terminal."""
    env = os.environ if env is None else env
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    if env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def configure(level: str | None = None, json: bool | None = None) -> None:
    """Configure structlog once per process: ``level`` (else ``FAMILIAR_LOG_LEVEL``, else
    warning), JSON lines when ``json`` (else ``FAMILIAR_LOG_JSON=1``), console lines
    otherwise, coloured as :func:`use_colour` says. An unknown level is a
    :class:`ConfigError` (exit 2)."""
    import structlog

    if level is not None:
        numeric = level_number(level)
    else:
        env = os.environ.get("FAMILIAR_LOG_LEVEL", "").strip()
        numeric = level_number(env, "FAMILIAR_LOG_LEVEL") if env else _NUMERIC["warning"]
    as_json = json if json is not None else os.environ.get("FAMILIAR_LOG_JSON") == "1"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=use_colour(sys.stderr))
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_correlation_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            *(() if as_json else (_fold,)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
