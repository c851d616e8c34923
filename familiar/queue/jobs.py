"""Pure: job ids, message ids, and the JSON of jobs and results on the wire.

A job is one article with the options that shape its translation. Its id is a hash of
everything that decides the output (the text, the languages, the format, the chunk
budget, the glossary, the retry schedule), so the same article asked the same way is the
same job in every batch and on every host: the submitter publishes it with that id as
``Nats-Msg-Id`` (JetStream drops a second publish within the duplicate window) and the
results store is keyed by it (a rerun finds what is done).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from familiar.translate.chunks import BatchOptions
from familiar.translate.report import ArticleReport

FORMAT = 1  # of jobs and results; part of the job id, so a new format is a new job

#: the report fields a worker fills in (``path`` and ``out`` are the submitter's)
REPORT_FIELDS = tuple(f.name for f in fields(ArticleReport) if f.name not in ("path", "out"))


class AlteredJob(Exception):
    """A job whose text does not hash to its id: not what its submitter asked for."""


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class JobOptions:
    """The options of a batch that travel with each job (the worker's slot decides the
    model and its token limit)."""

    to: str
    source_lang: str = "auto"
    fmt: str = "chat"
    chunk_tokens: int = 700
    force: bool = False
    glossary: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, opts: BatchOptions) -> JobOptions:
        return cls(
            to=opts.to,
            source_lang=opts.source_lang,
            fmt=opts.fmt,
            chunk_tokens=opts.chunk_tokens,
            force=opts.force,
            glossary=dict(opts.glossary),
        )

    def batch_options(self) -> BatchOptions:
        return BatchOptions(
            to=self.to,
            source_lang=self.source_lang,
            fmt=self.fmt,  # type: ignore[arg-type]  # checked by the submitter's CLI
            chunk_tokens=self.chunk_tokens,
            force=self.force,
            glossary=dict(self.glossary),
        )

    def shaping(self) -> dict[str, Any]:
        """What decides the output (``force`` does not)."""
        out = asdict(self)
        del out["force"]
        out["retry"] = self.batch_options().retry_schedule()
        return out


def job_id(text: str, opts: JobOptions) -> str:
    """The id of translating ``text`` under ``opts``: the same everywhere, every time."""
    return hashlib.sha256(
        _canonical({"format": FORMAT, "text": text, "options": opts.shaping()})
    ).hexdigest()[:40]


def message_id(job: str, again: bool = False) -> str:
    """``Nats-Msg-Id`` of a job: the job id the first time (a job still queued from a
    killed run is not queued twice), a fresh one when it is published again (after a
    failed result, or when it is neither stored nor queued: the duplicate window must not
    swallow it)."""
    return f"{job}.{secrets.token_hex(6)}" if again else job


@dataclass(frozen=True)
class JobMessage:
    """One job as published: the article's text inline, or the name of the object that
    holds it (articles over the server's payload limit)."""

    job: str
    rel: str
    options: JobOptions
    text: str | None = None
    text_object: str | None = None

    def encode(self) -> bytes:
        return _canonical(
            {
                "format": FORMAT,
                "job": self.job,
                "rel": self.rel,
                "options": asdict(self.options),
                "text": self.text,
                "text_object": self.text_object,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> JobMessage:
        """The job in ``data``; ``ValueError`` when it is not one."""
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise ValueError(f"job format {raw.get('format')!r}, expected {FORMAT}")
            opts = JobOptions(**raw["options"])
            msg = cls(str(raw["job"]), str(raw["rel"]), opts, raw["text"], raw["text_object"])
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a familiar job: {exc}") from None
        if (msg.text is None) == (msg.text_object is None):
            raise ValueError("a job carries its text or names its object, exactly one")
        return msg


@dataclass(frozen=True)
class JobResult:
    """What a worker stores for a job: the report fields, and the output (inline, or the
    name of its object), absent when the article was skipped or failed outright."""

    report: dict[str, Any]
    output: str | None = None
    output_object: str | None = None
    worker: str = ""
    deliveries: int = 1

    @property
    def status(self) -> str:
        return str(self.report.get("status", "error"))

    @property
    def done(self) -> bool:
        """A result a rerun keeps (failed and errored articles are asked again)."""
        return self.status in ("ok", "skipped")

    @classmethod
    def of(cls, report: ArticleReport, output: str | None, **kw: Any) -> JobResult:
        data = asdict(report)
        return cls({k: data[k] for k in REPORT_FIELDS}, output, **kw)

    @classmethod
    def failure(cls, error: str, *, status: str = "failed", **kw: Any) -> JobResult:
        return cls.of(ArticleReport(path="", status=status, error=error), None, **kw)

    def fill(self, report: ArticleReport) -> None:
        """Copy the worker's fields onto the submitter's row of this article."""
        for name in REPORT_FIELDS:
            if name in self.report:
                setattr(report, name, self.report[name])

    def encode(self) -> bytes:
        return _canonical({"format": FORMAT, **asdict(self)})

    @classmethod
    def decode(cls, data: bytes) -> JobResult:
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise ValueError(f"result format {raw.get('format')!r}, expected {FORMAT}")
            return cls(
                dict(raw["report"]),
                raw["output"],
                raw["output_object"],
                str(raw.get("worker", "")),
                int(raw.get("deliveries", 1)),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a familiar job result: {exc}") from None
