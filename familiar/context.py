"""Context carried across awaits: the correlation id of the current session or batch.

Also the current telemetry span (``current_span``), the parent of the events emitted
inside it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

correlation_id: ContextVar[str | None] = ContextVar("familiar_correlation_id", default=None)
#: the span id that new telemetry events take as their ``parent_span_id``
current_span: ContextVar[str | None] = ContextVar("familiar_span", default=None)
#: what requests that share a prompt prefix have in common (an article of a batch); the
#: replica choice keeps them on one replica, whose prefix cache then serves them. None:
#: the correlation id (a session's requests share its system prompt and decisions).
affinity_key: ContextVar[str | None] = ContextVar("familiar_affinity", default=None)


def current_affinity() -> str | None:
    return affinity_key.get() or correlation_id.get()


@contextmanager
def bound_affinity(value: str) -> Iterator[str]:
    """Requests made in the enclosed code (and its tasks) prefer one replica."""
    token = affinity_key.set(value)
    try:
        yield value
    finally:
        affinity_key.reset(token)


def new_correlation_id() -> str:
    """A fresh id: sortable by time prefix, unique by random suffix."""
    return uuid.uuid7().hex if hasattr(uuid, "uuid7") else uuid.uuid4().hex


@contextmanager
def bound_correlation_id(value: str) -> Iterator[str]:
    """Bind ``value`` as the correlation id for the enclosed code (and its tasks)."""
    token = correlation_id.set(value)
    try:
        yield value
    finally:
        correlation_id.reset(token)
