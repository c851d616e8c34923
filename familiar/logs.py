"""structlog set-up: JSON or console lines on stderr, correlation id bound, secrets masked."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from familiar.context import correlation_id

_SECRET_KEYS = re.compile(r"(api[_-]?key|authorization|token|secret|password)", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{6,}")
_SK = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")
# in free text only credentials are hidden: ``user:password@`` (``ssh://git@host`` is not
# one; a lone token in a configured URL is registered as a secret and masked by value)
_PASSWORD_INFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@")
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


def redact_url(url: str) -> str:
    """``url`` without its userinfo (``http://user:pw@host`` -> ``http://host``)."""
    return _USERINFO.sub(r"\1", url) if "@" in url else url


def mask(text: str) -> str:
    """Hide known secret values, bearer tokens, ``sk-...`` keys and URL passwords."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    if "@" in text:
        text = _PASSWORD_INFO.sub(r"\1", text)
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


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    """A logger on whatever ``sys.stderr`` is now (tests and tools swap it)."""
    return structlog.PrintLogger(sys.stderr)


def configure(level: str | None = None, json: bool | None = None) -> None:
    """Configure structlog once per process. ``FAMILIAR_LOG_LEVEL``, ``FAMILIAR_LOG_JSON``."""
    name = (level or os.environ.get("FAMILIAR_LOG_LEVEL") or "warning").upper()
    numeric = logging.getLevelNamesMapping().get(name, logging.WARNING)
    as_json = json if json is not None else os.environ.get("FAMILIAR_LOG_JSON") == "1"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_correlation_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
