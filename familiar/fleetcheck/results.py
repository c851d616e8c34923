"""Pure: what one bench request measured (:class:`Sample`) and one concurrency level's
aggregate (:class:`Level`), with the definitions of ``vllm bench serve``:

* TTFT: from sending the request to the first streamed piece of text;
* TPOT: per request, ``(e2e - ttft) / (output tokens - 1)`` (requests of one token have
  none);
* ITL: every gap between two streamed pieces of text, all requests pooled;
* e2e: from sending the request to the end of the stream;
* request/s and output tok/s: finished requests and their output tokens over the
  level's wall time (first request sent to last one ended).

Only requests the server said it finished (a ``finish_reason``) count as ok; everything
else is a failure with its reason counted in ``errors``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from familiar.fleetcheck.stats import Summary


@dataclass(frozen=True)
class Sample:
    """One request of a bench as measured (times in seconds)."""

    ok: bool
    e2e_s: float
    ttft_s: float | None = None
    itl_s: tuple[float, ...] = ()
    output_tokens: int = 0
    prompt_tokens: int | None = None
    error: str | None = None
    #: sent again on a new connection: the kept-alive one was closed by the server
    reconnected: bool = False

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass(frozen=True)
class Level:
    """One concurrency level of a sweep."""

    concurrency: int
    ok: int
    failed: int
    duration_s: float
    output_tokens: int
    ttft: Summary = field(default_factory=Summary)
    tpot: Summary = field(default_factory=Summary)
    itl: Summary = field(default_factory=Summary)
    e2e: Summary = field(default_factory=Summary)
    input_tokens_mean: float | None = None
    errors: Mapping[str, int] = field(default_factory=dict)
    reconnects: int = 0
    #: output tok/s of each ``--repeat`` run of this level (empty: one run)
    runs_tok_per_s: tuple[float, ...] = ()
    #: open loop (``bench --rate``): the Poisson arrival rate asked for (``math.inf``: all
    #: at once), the rate the requests were really sent at, and the most in flight
    #: (``concurrency`` is then the cap on requests in flight); None: a closed-loop level
    rate: float | None = None
    achieved_rate: float | None = None
    max_in_flight: int | None = None

    @property
    def spread(self) -> float:
        """max - min output tok/s over the repeated runs (0 with one run)."""
        return max(self.runs_tok_per_s) - min(self.runs_tok_per_s) if self.runs_tok_per_s else 0.0

    @property
    def requests(self) -> int:
        return self.ok + self.failed

    @property
    def pass_rate(self) -> float:
        return self.ok / self.requests if self.requests else 0.0

    @property
    def req_per_s(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def output_tok_per_s(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "ok": self.ok,
            "failed": self.failed,
            "pass_rate": round(self.pass_rate, 4),
            "duration_s": round(self.duration_s, 3),
            "req_per_s": round(self.req_per_s, 3),
            "output_tok_per_s": round(self.output_tok_per_s, 2),
            "output_tokens": self.output_tokens,
            "input_tokens_mean": None
            if self.input_tokens_mean is None
            else round(self.input_tokens_mean, 1),
            "ttft_ms": self.ttft.to_json(),
            "tpot_ms": self.tpot.to_json(),
            "itl_ms": self.itl.to_json(),
            "e2e_ms": self.e2e.to_json(),
            "errors": dict(self.errors),
            "reconnects": self.reconnects,
            "runs_output_tok_per_s": [round(x, 2) for x in self.runs_tok_per_s],
            **self._open_json(),
        }

    def _open_json(self) -> dict[str, Any]:
        if self.rate is None:
            return {}
        return {
            "request_rate": "inf" if math.isinf(self.rate) else self.rate,
            "achieved_rate": None if self.achieved_rate is None else round(self.achieved_rate, 3),
            "max_in_flight": self.max_in_flight,
        }

    @classmethod
    def from_json(cls, data: Any) -> Level:
        """Read back a level of a saved run (``ValueError`` when it is not one)."""
        if not isinstance(data, dict):
            raise ValueError("a level must be an object")
        try:
            ok, failed = int(data["ok"]), int(data["failed"])
            duration = float(data["duration_s"])
            tokens = int(data.get("output_tokens", round(data["output_tok_per_s"] * duration)))
            errors = data.get("errors") or {}
            return cls(
                concurrency=int(data["concurrency"]),
                ok=ok,
                failed=failed,
                duration_s=duration,
                output_tokens=tokens,
                ttft=Summary.from_json(data["ttft_ms"]),
                tpot=Summary.from_json(data["tpot_ms"]),
                itl=Summary.from_json(data["itl_ms"]),
                e2e=Summary.from_json(data["e2e_ms"]),
                input_tokens_mean=None
                if data.get("input_tokens_mean") is None
                else float(data["input_tokens_mean"]),
                errors={str(k): int(v) for k, v in dict(errors).items()},
                reconnects=int(data.get("reconnects", 0)),
                runs_tok_per_s=tuple(float(x) for x in data.get("runs_output_tok_per_s") or ()),
                rate=None if data.get("request_rate") is None else float(data["request_rate"]),
                achieved_rate=None
                if data.get("achieved_rate") is None
                else float(data["achieved_rate"]),
                max_in_flight=None
                if data.get("max_in_flight") is None
                else int(data["max_in_flight"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a bench level: {exc}") from None


def summarize(
    concurrency: int,
    samples: Sequence[Sample],
    duration_s: float,
    runs_tok_per_s: Sequence[float] = (),
) -> Level:
    """Aggregate the samples of one level (``duration_s``: its wall time, summed over
    repeated runs; ``runs_tok_per_s``: each run's throughput when it was repeated)."""
    good = [s for s in samples if s.ok]
    prompts = [s.prompt_tokens for s in good if s.prompt_tokens is not None]
    errors = Counter(s.error or "unknown error" for s in samples if not s.ok)
    return Level(
        concurrency=concurrency,
        ok=len(good),
        failed=len(samples) - len(good),
        duration_s=duration_s,
        output_tokens=sum(s.output_tokens for s in good),
        ttft=Summary.of_seconds([s.ttft_s for s in good if s.ttft_s is not None]),
        tpot=Summary.of_seconds([t for s in good if (t := s.tpot_s) is not None]),
        itl=Summary.of_seconds([gap for s in good for gap in s.itl_s]),
        e2e=Summary.of_seconds([s.e2e_s for s in good]),
        input_tokens_mean=sum(prompts) / len(prompts) if prompts else None,
        errors=dict(errors.most_common()),
        reconnects=sum(1 for s in samples if s.reconnected),
        runs_tok_per_s=tuple(runs_tok_per_s),
    )
