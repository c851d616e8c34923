"""Telemetry to Vector: events with correlation ids, never blocking the work.

``Telemetry.emit()`` is synchronous and never awaits: the event goes into a bounded
in-memory buffer (or, when that is full, straight to the spill file). A background
task POSTs batches as one compact JSON array to Vector's ``http_server`` source,
flushing by size and by interval, with tenacity retries on connect errors, 5xx and
429. A 400, 413 or other 4xx answer splits the batch; a single event still refused is
dropped and counted, never retried forever: one ``telemetry.dropped`` event per flush
carries the count, and one warning line at close names it.

When Vector is away, events go to ``FAMILIAR_HOME/telemetry/spill.jsonl``
(:class:`SpillFile`), replayed in order, once, as soon as Vector answers again (this
run, the next, or ``familiar telemetry flush``). The spill file survives crashes and
concurrent familiar processes: every spill call is one ``O_APPEND`` write under an
``flock``; a replay sends batches and records its progress in ``spill.offset`` after
each delivered batch, so a replay killed half-way resumes where it stopped; lines that
do not read back as a JSON object are skipped and counted (``corrupt``), never fatal.
On close, even while the caller is being cancelled: flush within a deadline, spill the
rest, then re-raise the caller's cancellation.

Modules: ``events`` (pure: ids, span ids, the event fields), ``spill`` (the spill
file), ``delivery`` (POST, retries, splitting refused batches), ``stats``
(``stats.json``), ``sender`` (``Telemetry``). The span contextvar ``current_span``
lives in ``familiar.context``.
"""

from __future__ import annotations

from familiar.context import current_span
from familiar.errors import TelemetryUnavailable
from familiar.telemetry.events import (
    SERVICE,
    llm_call_fields,
    make_event,
    new_id,
    new_span_id,
)
from familiar.telemetry.sender import DEFAULT_URL, Telemetry
from familiar.telemetry.spill import Counts, SpillFile

__all__ = [
    "DEFAULT_URL",
    "SERVICE",
    "Counts",
    "SpillFile",
    "Telemetry",
    "TelemetryUnavailable",
    "current_span",
    "llm_call_fields",
    "make_event",
    "new_id",
    "new_span_id",
]
