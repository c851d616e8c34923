"""Pure: the plain-text tables of ``familiar health`` and ``familiar bench``.

Whole lines, fixed columns, no colour: they read the same in a terminal, a log or a
cron mail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from familiar.fleetcheck.probe import ReplicaHealth
from familiar.fleetcheck.results import Level
from familiar.fleetcheck.stats import Summary


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    groups: Sequence[tuple[int, int, str]] = (),
) -> str:
    """Columns right-aligned (the first left-aligned), two spaces apart; ``groups`` are
    ``(first column, last column, name)``, the name centred above those columns."""
    cells = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def fmt(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])]
        parts.extend(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))
        return "  ".join(parts).rstrip()

    lines = [fmt(r) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if groups:
        starts = [sum(widths[:i]) + 2 * i for i in range(len(widths))]
        above = [" "] * (starts[-1] + widths[-1])
        for first, last, name in groups:
            left, right = starts[first], starts[last] + widths[last]
            at = max(left, left + (right - left - len(name)) // 2)
            above[at : at + len(name)] = name
        lines.insert(0, "".join(above).rstrip())
    return "\n".join(lines)


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _summary(s: Summary, keys: Sequence[str] = ("mean", "p50", "p99")) -> list[str]:
    return [ms(getattr(s, k)) for k in keys]


def bench_text(run: Mapping[str, Any], levels: Sequence[Level]) -> str:
    """The per-level table of a bench run, its knee and the suggested ``parallel``."""
    headers = [
        "conc", "ok", "failed", "req/s", "out tok/s",
        "mean", "p50", "p99", "mean", "p50", "p99",
        "mean", "p50", "p99", "mean", "p50", "p99",
    ]  # fmt: skip
    rows = [
        [
            str(lv.concurrency),
            str(lv.ok),
            str(lv.failed),
            f"{lv.req_per_s:.2f}",
            f"{lv.output_tok_per_s:.1f}",
            *_summary(lv.ttft),
            *_summary(lv.tpot),
            *_summary(lv.itl),
            *_summary(lv.e2e),
        ]
        for lv in sorted(levels, key=lambda lv: lv.concurrency)
    ]
    names = ("TTFT ms", "TPOT ms", "ITL ms", "E2E ms")
    ordered = sorted(levels, key=lambda lv: lv.concurrency)
    if any(lv.runs_tok_per_s for lv in ordered):  # --repeat: each level's spread
        headers.insert(5, "spread")
        for row, lv in zip(rows, ordered, strict=True):
            row.insert(5, f"±{lv.spread / 2:.1f}")
        groups = [(6 + 3 * g, 8 + 3 * g, name) for g, name in enumerate(names)]
    else:
        groups = [(5 + 3 * g, 7 + 3 * g, name) for g, name in enumerate(names)]
    body = table(headers, rows, groups)
    knee = run.get("knee") or {}
    lines = [
        f"bench {run.get('slot')}: {run.get('model')} ({run.get('runtime')}"
        f"{_version(run)}) at {', '.join(run.get('url') or [])}",
        body,
        _bench_totals(run, ordered),
        "",
    ]
    suggested = run.get("suggested_parallel")
    if suggested is None:
        lines.append("suggested parallel = none (no level passed: see the failures above)")
        return "\n".join(lines)
    lines.append(
        f"suggested parallel = {suggested}  (configured: {run.get('parallel')}; peak"
        f" {knee.get('peak_output_tok_per_s')} output tok/s at concurrency"
        f" {knee.get('peak_concurrency')}; the knee is the smallest concurrency reaching"
        f" {round(100 * float(knee.get('share_of_peak', 0.9)))}% of it)"
    )
    server = run.get("server") or {}
    capacity = server.get("server_parallel") if isinstance(server, dict) else None
    if knee.get("capped_at_server_parallel") is not None:
        lines.append(
            f"capped at {capacity}: the server itself runs {capacity} requests at once"
            f" (throughput alone pointed higher; past {capacity} requests only queue in it)"
        )
    elif capacity is not None:
        lines.append(f"the server itself runs {capacity} requests at once")
    if knee.get("noise_warning"):
        lines.append(f"warning: {knee['noise_warning']}")
    if knee.get("ttft_p99_climbs_at") is not None:
        lines.append(f"TTFT p99 climbs from concurrency {knee['ttft_p99_climbs_at']} on")
    if not knee.get("saturated", True) and knee.get("capped_at_server_parallel") is None:
        lines.append(
            "throughput was still rising at the highest concurrency tested: sweep higher"
            " (--concurrency) to find the real knee"
        )
    return "\n".join(lines)


def _bench_totals(run: Mapping[str, Any], levels: Sequence[Level]) -> str:
    requests = sum(lv.requests for lv in levels)
    failed = sum(lv.failed for lv in levels)
    tokens = sum(lv.output_tokens for lv in levels)
    took = run.get("duration_s")
    wall = f" in {float(took):.1f} s" if isinstance(took, int | float) else ""
    return (
        f"{len(levels)} level(s), {requests} measured request(s), {failed} failed,"
        f" {tokens} output tokens{wall}"
    )


def _version(run: Mapping[str, Any]) -> str:
    server = run.get("server") or {}
    version = server.get("version") if isinstance(server, dict) else None
    return f" {version}" if version else ""


def compare_text(
    a: Mapping[str, Any], la: Sequence[Level], b: Mapping[str, Any], lb: Sequence[Level]
) -> str:
    """Before (``a``) / after (``b``) per concurrency both runs measured, with ratios."""
    before = {lv.concurrency: lv for lv in la}
    after = {lv.concurrency: lv for lv in lb}
    common = sorted(set(before) & set(after))
    headers = [
        "conc", "tok/s A", "tok/s B", "x",
        "TTFT p99 A", "B", "x", "TPOT p99 A", "B", "x", "E2E p99 A", "B", "x",
        "pass A", "pass B",
    ]  # fmt: skip
    rows = []
    for c in common:
        x, y = before[c], after[c]
        rows.append(
            [
                str(c),
                f"{x.output_tok_per_s:.1f}",
                f"{y.output_tok_per_s:.1f}",
                ratio(x.output_tok_per_s, y.output_tok_per_s),
                ms(x.ttft.p99), ms(y.ttft.p99), ratio(x.ttft.p99, y.ttft.p99),
                ms(x.tpot.p99), ms(y.tpot.p99), ratio(x.tpot.p99, y.tpot.p99),
                ms(x.e2e.p99), ms(y.e2e.p99), ratio(x.e2e.p99, y.e2e.p99),
                f"{100 * x.pass_rate:.0f}%",
                f"{100 * y.pass_rate:.0f}%",
            ]
        )  # fmt: skip
    lines = [f"A: {_describe(a)}", f"B: {_describe(b)}", ""]
    if not rows:
        lines.append("the two runs share no concurrency level")
        return "\n".join(lines)
    lines.append(table(headers, rows))
    only = sorted(set(before) ^ set(after))
    if only:
        lines.append(f"(levels measured by one run only: {', '.join(map(str, only))})")
    lines.append("x = B / A (above 1: B is higher: better for tok/s, worse for latency)")
    lines.append(
        f"suggested parallel: A {a.get('suggested_parallel')}, B {b.get('suggested_parallel')}"
    )
    return "\n".join(lines)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return "-"
    return f"{b / a:.2f}"


def _describe(run: Mapping[str, Any]) -> str:
    return (
        f"{run.get('id', '?')}  slot {run.get('slot')}, {run.get('model')}"
        f" ({run.get('runtime')}{_version(run)}), {run.get('started_at', '')}"
    )


HEALTH_HEADERS = (
    "slot", "url", "ok", "model", "health", "probe ms", "server/parallel", "run/wait", "seats",
)  # fmt: skip


def health_rows(rows: Sequence[ReplicaHealth]) -> tuple[list[list[str]], list[str]]:
    """The table rows (one per replica) and the notes (problems, warnings) under it."""
    table_rows = []
    notes: list[str] = []
    for r in rows:
        table_rows.append(
            [
                r.slot,
                r.url,
                "ok" if r.ok else "DOWN",
                "-" if r.model_served is None else ("served" if r.model_served else "MISSING"),
                "-" if r.health_ok is None else (str(r.health_status or "") or "fail"),
                ms(r.probe_ms),
                f"{_dash(r.server_parallel)}/{r.parallel}",
                f"{_dash(r.running)}/{_dash(r.waiting)}",
                "-" if r.seats_in_use is None else f"{r.seats_in_use}/{r.seats_cap}",
            ]
        )
        if r.error:
            notes.append(f"{r.slot} {r.url}: {r.error}")
        for w in r.warnings:
            note = f"{r.slot}: warning: {w}"
            if note not in notes:
                notes.append(note)
    return table_rows, notes


def health_totals(rows: Sequence[ReplicaHealth]) -> str:
    down = sum(1 for r in rows if not r.ok)
    slots = len({r.slot for r in rows})
    return f"{len(rows)} replica(s) of {slots} slot(s): {len(rows) - down} ok, {down} down"


def health_text(rows: Sequence[ReplicaHealth], ledger: Mapping[str, Any]) -> str:
    """One line per replica, then its problems and warnings, the ledger's state, and the
    totals line. Whole values, fixed columns."""
    table_rows, notes = health_rows(rows)
    out = [table(HEALTH_HEADERS, table_rows)]
    out.extend(notes)
    if ledger.get("error"):
        out.append(f"seat ledger ({ledger.get('kind')}, {ledger.get('where')}): {ledger['error']}")
    out.append(health_totals(rows))
    return "\n".join(out)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)
