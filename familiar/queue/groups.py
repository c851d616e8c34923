"""Pure: request groups, the work queue's jobs of ``familiar batch --nats``.

A request group is a few consecutive request lines of an OpenAI Batch JSONL file (at
most ``max_requests`` of them and ``max_bytes`` of text, a line over the budget alone),
with the batch's ``--role``/``--slot``. Its id is a hash of its text and those options,
so the same lines asked the same way are the same job in every run: a rerun finds the
result a killed run's workers stored, and a group still queued is not queued twice.
Boundaries are drawn over every request line of the file, answered or not, so a rerun
cuts the file where the first run did; a group sends only its lines still without a
result (and so has a new id when some of its lines were answered meanwhile).

On the wire a group is ``{"format": 1, "kind": "requests", "job", "rel", "options":
{"role", "slot"}, "lines": [line numbers], "text" | "text_object"}``: ``text`` is the raw
request lines, one per line number, each ending in a newline (in the object store when
over the server's payload limit). Its result is a :class:`~familiar.queue.jobs.JobResult`
whose output is the result lines, one per request, as a local batch writes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from familiar.queue.jobs import JobMessage

FORMAT = 1
KIND = "requests"
#: requests per group, and its text's budget (the queue's cost per request stays small;
#: the server's payload limit bounds the budget further)
MAX_REQUESTS = 32
MAX_BYTES = 256 * 1024

T = TypeVar("T")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class GroupOptions:
    """What travels with each group: how its requests pick a slot on the worker."""

    role: str | None = None
    slot: str | None = None


def group_id(text: str, opts: GroupOptions) -> str:
    """The id of asking the request lines ``text`` under ``opts``: the same every time."""
    return hashlib.sha256(
        _canonical({"format": FORMAT, "kind": KIND, "text": text, "options": asdict(opts)})
    ).hexdigest()[:40]


def group_text(lines: Iterable[bytes | str]) -> str:
    """Raw request lines as a group's text: each ends in exactly one newline."""
    out = []
    for raw in lines:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        out.append(line.rstrip("\r\n") + "\n")
    return "".join(out)


def split_text(text: str) -> list[str]:
    """A group's text as its lines (newlines only: a JSON string may hold U+2028)."""
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def cut(
    items: Iterable[T], size: Callable[[T], int], *, max_requests: int, max_bytes: int
) -> Iterator[list[T]]:
    """``items`` in consecutive runs of at most ``max_requests`` items and ``max_bytes``
    (``size(item)`` each; an item over ``max_bytes`` is a run of its own)."""
    if max_requests < 1 or max_bytes < 1:
        raise ValueError("a group holds at least one request and one byte")
    run: list[T] = []
    used = 0
    for item in items:
        n = size(item)
        if run and (len(run) >= max_requests or used + n > max_bytes):
            yield run
            run, used = [], 0
        run.append(item)
        used += n
    if run:
        yield run


@dataclass(frozen=True)
class RequestGroup:
    """One group as published: its request lines inline, or the name of their object."""

    job: str
    rel: str  # for people: "requests.jsonl lines 1-32"
    options: GroupOptions
    lines: tuple[int, ...]
    text: str | None = None
    text_object: str | None = None

    def encode(self) -> bytes:
        return _canonical(
            {
                "format": FORMAT,
                "kind": KIND,
                "job": self.job,
                "rel": self.rel,
                "options": asdict(self.options),
                "lines": list(self.lines),
                "text": self.text,
                "text_object": self.text_object,
            }
        )

    @classmethod
    def of(cls, raw: dict[str, Any]) -> RequestGroup:
        """The group in a decoded message; ``ValueError`` when it is not one."""
        try:
            if raw.get("format") != FORMAT:
                raise ValueError(f"group format {raw.get('format')!r}, expected {FORMAT}")
            opts = raw["options"]
            role, slot = opts.get("role"), opts.get("slot")
            if not all(v is None or isinstance(v, str) for v in (role, slot)):
                raise ValueError("role and slot are names")
            lines = tuple(raw["lines"])
            if not lines or not all(isinstance(n, int) and n > 0 for n in lines):
                raise ValueError("lines are line numbers")
            text, obj = raw["text"], raw["text_object"]
            group = cls(
                str(raw["job"]), str(raw["rel"]), GroupOptions(role, slot), lines, text, obj
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a familiar request group: {exc}") from None
        if (text is None) == (obj is None):
            raise ValueError("a group carries its text or names its object, exactly one")
        if not all(v is None or isinstance(v, str) for v in (text, obj)):
            raise ValueError("a group's text is a string")
        return group


def decode_job(data: bytes) -> JobMessage | RequestGroup:
    """A queue message: a request group, else a translation job; ``ValueError`` when it
    is neither."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a familiar job: {exc}") from None
    if isinstance(raw, dict) and raw.get("kind") == KIND:
        return RequestGroup.of(raw)
    return JobMessage.decode(data)
