"""``familiar health`` and ``familiar bench``: thin commands over ``familiar.fleetcheck``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from familiar.cli import signals
from familiar.config.workspace import Config, find_workspace, load_config, shipped_dir, state_home
from familiar.errors import ConfigError, RuntimeFailure, Terminated

Common = Callable[[argparse.ArgumentParser], None]


def add_fleetcheck_commands(sub: Any, common: Common) -> None:
    h = sub.add_parser(
        "health",
        help="probe every active slot: reachable, model served, health, one-token answer",
        description="Probe every replica of every active slot: /models serves the"
        " configured model, the runtime's own health endpoint, a one-token answer that"
        " finished, the server's capacity and load against parallel, seats in use in the"
        " ledger. Exit 0 when all are healthy, 1 when any is down.",
    )
    common(h)
    h.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON on stdout (one line per round with --watch)",
    )
    h.add_argument("--watch", metavar="SECONDS", help="check again every SECONDS until Ctrl-C")
    h.add_argument("--timeout", metavar="SECONDS", default="10", help="per check (default 10)")
    h.set_defaults(func=cmd_health)

    b = sub.add_parser(
        "bench",
        help="sweep a slot's server over concurrency levels; suggest parallel",
        description="Measure a slot's server like `vllm bench serve`: per concurrency"
        " level, requests ok/failed, request/s, output tok/s, TTFT, TPOT, ITL and"
        " end-to-end latency (mean, p50, p99), from streamed answers. Holds every seat of"
        " the deployment in the seat ledger while it runs, goes past parallel on purpose,"
        " and suggests parallel: the smallest concurrency reaching 90% of the peak"
        " throughput. `familiar bench --compare A B` compares two saved runs. With --rate,"
        " an open loop instead: requests arrive at R per second (Poisson, as vllm bench"
        " serve --request-rate), whether or not earlier ones ended.",
    )
    common(b)
    b.add_argument("slot", nargs="?", help="the slot to bench")
    b.add_argument(
        "--concurrency",
        metavar="LIST",
        help="levels, e.g. 1,2,4,8 or 1..256 (powers of two); default 1 .. 4 x parallel",
    )
    b.add_argument(
        "--rate",
        metavar="LIST",
        help="open loop: Poisson arrivals at R requests/s per level, e.g. 1,2,inf (inf: all"
        " at once), at most the seats held in flight (or the one --concurrency given)",
    )
    b.add_argument(
        "--requests",
        metavar="N",
        help="requests per level, at least the level (default 4 x level, at least 8)",
    )
    b.add_argument("--input-tokens", metavar="N", help="synthetic prompt length (default 512)")
    b.add_argument("--output-tokens", metavar="N", help="tokens to generate (default 128)")
    b.add_argument("--prompts", type=Path, metavar="FILE", help="prompts: lines, or .jsonl")
    b.add_argument(
        "--json",
        action="store_true",
        help="print the run (or the comparison) as JSON on stdout; progress stays on stderr",
    )
    b.add_argument("--plot", type=Path, metavar="FILE.png", help="draw tok/s and p99 TTFT")
    b.add_argument("--save", action="store_true", help="keep the run in FAMILIAR_HOME/bench")
    b.add_argument(
        "--repeat",
        metavar="N",
        help="run every level N times: the spread is shown, and a warning when the knee"
        " is within it (default 1)",
    )
    b.add_argument(
        "--no-warmup", action="store_true", help="no unmeasured warm-up request before a level"
    )
    b.add_argument("--apply", action="store_true", help="write the suggested parallel")
    b.add_argument(
        "--yes",
        action="store_true",
        help="--apply even when other slots share the deployment; --compare runs of"
        " different settings",
    )
    b.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two saved runs (file or id)")
    b.add_argument("--list", action="store_true", help="list the saved runs (bench --save)")
    b.set_defaults(func=cmd_bench)


def _number(option: str, text: str | None, *, whole: bool = True) -> Any:
    if text is None:
        return None
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{option}: {text!r} is not {kind}") from None
    if value <= 0:
        raise ConfigError(f"{option}: must be above 0, not {text}")
    return value


def _stderr(line: str) -> None:
    print(f"familiar: {line}", file=sys.stderr, flush=True)


# -- health ------------------------------------------------------------------------------


def cmd_health(args: argparse.Namespace) -> int:
    watch = _number("--watch", args.watch, whole=False)
    timeout = _number("--timeout", args.timeout, whole=False)
    cfg = load_config(workspace=args.workspace, slots=args.slots)
    last = [1]
    try:
        return signals.run(_health(cfg, args.json, watch, timeout, last))
    except KeyboardInterrupt as exc:
        if watch is None or isinstance(exc, Terminated):
            raise
        return last[0]  # Ctrl-C is how --watch ends: exit with the last round's verdict


async def _health(
    cfg: Config, as_json: bool, watch: float | None, timeout_s: float, last: list[int]
) -> int:
    from familiar.context import bound_correlation_id, new_correlation_id
    from familiar.fleetcheck.health import check, events
    from familiar.fleetcheck.report import health_text
    from familiar.ledger import make_ledger
    from familiar.telemetry import Telemetry

    ledger = make_ledger(cfg.fleet)
    async with Telemetry(cfg.home) as telemetry:
        while True:
            with bound_correlation_id(new_correlation_id()):
                report = await check(
                    cfg.active_slots, home=cfg.home, ledger=ledger, timeout_s=timeout_s
                )
                for fields in events(report):
                    telemetry.emit("fleet.health", fields)
            last[0] = 0 if report.ok else 1
            if as_json:
                data = report.to_json()
                print(json.dumps(data) if watch else json.dumps(data, indent=2), flush=True)
            else:
                if watch:
                    down = sum(1 for r in report.rows if not r.ok)
                    verdict = "all healthy" if report.ok else f"{down} down"
                    print(f"== {time.strftime('%Y-%m-%d %H:%M:%S')}  {verdict}")
                _print_health(report, health_text)
            if watch is None:
                return last[0]
            await asyncio.sleep(watch)


def _print_health(report: Any, health_text: Callable[..., str]) -> None:
    """Fixed columns of whole values in a pipe or a log; on a terminal a table whose URL
    and notes wrap to its width (never cut)."""
    from familiar.fleetcheck.report import HEALTH_HEADERS, health_rows, health_totals
    from familiar.listing import is_terminal, print_table

    if not is_terminal(sys.stdout):
        print(health_text(report.rows, report.ledger), flush=True)
        return
    rows, notes = health_rows(report.rows)
    print_table(HEALTH_HEADERS, rows, fold=(1,))
    ledger = report.ledger
    if ledger.get("error"):
        notes.append(
            f"seat ledger ({ledger.get('kind')}, {ledger.get('where')}): {ledger['error']}"
        )
    for note in [*notes, health_totals(report.rows)]:
        print(note)  # a terminal wraps a long line; nothing is cut
    sys.stdout.flush()


# -- bench -------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args)
    if args.compare:
        return _compare(args)
    from familiar.fleetcheck.bench import parse_levels, run_bench
    from familiar.fleetcheck.prompts import load_prompts
    from familiar.fleetcheck.sweep import Workload

    if not args.slot:
        raise ConfigError("bench needs a SLOT to measure (or --compare A B)")
    if args.prompts is not None and args.input_tokens is not None:
        raise ConfigError("--prompts and --input-tokens exclude each other: choose one")
    try:
        levels = parse_levels(args.concurrency) if args.concurrency is not None else None
    except ValueError as exc:
        raise ConfigError(f"--concurrency: {exc}") from None
    rates = _rates(args, levels)
    requests = _number("--requests", args.requests)
    workload = Workload(
        input_tokens=_number("--input-tokens", args.input_tokens) or 512,
        output_tokens=_number("--output-tokens", args.output_tokens) or 128,
        prompts=load_prompts(args.prompts) if args.prompts is not None else None,
        requests=requests,
        repeat=_number("--repeat", args.repeat) or 1,
        warmup=not args.no_warmup,
    )
    cfg = load_config(workspace=args.workspace, slots=args.slots)
    if args.slot not in cfg.slots:
        known = ", ".join(sorted(cfg.slots))
        raise ConfigError(f"unknown slot {args.slot!r} ({cfg.slots_file} defines: {known})")
    if args.apply:
        _check_applicable(cfg, args.slot)
        _check_shared(cfg, args.slot, args.yes)
    if args.plot is not None:
        from familiar.fleetcheck.plot import require

        if not args.plot.parent.is_dir():
            raise ConfigError(f"--plot: directory {args.plot.parent} does not exist")
        require()
    run = signals.run(
        run_bench(
            cfg.slots,
            args.slot,
            workload,
            levels,
            home=cfg.home,
            fleet=cfg.fleet,
            progress=lambda line: _stderr(f"bench: {line}"),
            rates=rates,
        )
    )
    data = run.to_json()
    if args.save:
        from familiar.fleetcheck.saved import save

        path = save(cfg.home, data)
        data["saved"] = str(path)
        _stderr(f"bench: saved as {run.id} ({path})")
    if args.plot is not None:
        from familiar.fleetcheck.plot import chart
        from familiar.store import write_bytes_atomic

        title = f"{run.slot}: {run.model} ({run.runtime})"
        capacity = run.server.get("server_parallel")
        png = chart(
            run.levels,
            suggested=run.knee.suggested,
            title=title,
            server_parallel=capacity if isinstance(capacity, int) else None,
        )
        write_bytes_atomic(args.plot, png)
        _stderr(f"bench: chart written to {args.plot}")
    if args.apply and run.knee.suggested is not None:
        data["applied"] = _apply(cfg, args.slot, run.knee.suggested)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from familiar.fleetcheck.openloop import rate_text
        from familiar.fleetcheck.report import bench_text
        from familiar.fleetcheck.termchart import draw

        print(rate_text(data, run.levels) if rates else bench_text(data, run.levels))
        draw(run.levels, sys.stdout, title=f"{run.slot}: {run.model}")  # a terminal only
        if "applied" in data:
            applied = data["applied"]
            done = "written to" if applied["changed"] else "already in"
            print(f"parallel = {applied['parallel']} {done} {applied['file']}")
    sys.stdout.flush()
    if not any(lv.ok for lv in run.levels):
        raise RuntimeFailure(f"no request of the bench on slot {args.slot!r} finished")
    if args.apply and run.knee.suggested is None:
        raise RuntimeFailure("nothing to apply: no level passed (see the failures above)")
    return 0


def _rates(args: argparse.Namespace, levels: list[int] | None) -> list[float] | None:
    from familiar.fleetcheck.openloop import parse_rates

    if args.rate is None:
        return None
    try:
        rates = parse_rates(args.rate)
    except ValueError as exc:
        raise ConfigError(f"--rate: {exc}") from None
    if levels is not None and len(levels) > 1:
        raise ConfigError("--rate takes one --concurrency: the most requests in flight")
    for name, on in (("--apply", args.apply), ("--plot", args.plot is not None)):
        if on:
            raise ConfigError(f"{name} is for a concurrency sweep, not --rate")
    return rates


def _check_applicable(cfg: Config, slot: str) -> None:
    """Refuse --apply before the sweep when it could not be carried out after it."""
    from familiar.fleetcheck.slotsedit import set_parallel

    if cfg.slots[slot].embedded:
        raise ConfigError(
            f"--apply: slot {slot!r} is embedded: its seats are the local server's"
            " (familiar local up --seats N), not a parallel = line"
        )
    path = cfg.slots_file
    if path.resolve().parent == shipped_dir("roles").resolve():
        raise ConfigError(
            f"--apply: {path} is familiar's shipped default: copy it to"
            f" {cfg.workspace / 'slots.toml'} and bench again"
        )
    set_parallel(_read(path), slot, cfg.slots[slot].parallel, source=str(path))


def sharing(cfg: Config, slot: str) -> list[str]:
    """The other slots of the file on the same deployment as ``slot``."""
    mine = cfg.slots[slot]
    return sorted(
        name
        for name, other in cfg.slots.items()
        if name != slot and not other.embedded and other.deployment == mine.deployment
    )


def _check_shared(cfg: Config, slot: str, yes: bool) -> None:
    """--apply on a deployment other slots share: say which, change only with --yes."""
    others = sharing(cfg, slot)
    if not others:
        return
    names = ", ".join(others)
    if not yes:
        raise ConfigError(
            f"--apply: slot {slot!r} shares its deployment with {names}: the deployment's"
            " seats are the largest parallel of them, and the new value changes what they"
            " all get; add --yes to write it anyway"
        )
    _stderr(f"bench: --apply --yes: slot {slot!r} shares its deployment with {names}")


def _list(args: argparse.Namespace) -> int:
    from familiar.fleetcheck import saved
    from familiar.fleetcheck.report import table

    extra = [n for n, v in (("SLOT", args.slot), ("--compare", args.compare)) if v]
    if extra:
        raise ConfigError(f"--list takes no {', '.join(extra)}")
    home = state_home(find_workspace(args.workspace))
    runs = saved.summaries(home)
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    if not runs:
        print(f"no saved bench runs in {saved.bench_dir(home)} (bench SLOT --save keeps one)")
        return 0
    headers = ["id", "slot", "model", "started", "levels", "in/out tok", "repeat", "suggested"]
    rows = [
        [
            r["id"],
            str(r["slot"]),
            str(r["model"]),
            str(r["started_at"]),
            str(r["levels"]),
            f"{_dash(r['input_tokens'])}/{_dash(r['output_tokens'])}",
            str(r["repeat"]),
            f"{_dash(r['suggested_parallel'])}"
            + (f" (server {r['server_parallel']})" if r["server_parallel"] else ""),
        ]
        for r in runs
    ]
    print(table(headers, rows))
    skipped = len(saved.saved_ids(home)) - len(runs)
    unreadable = f" ({skipped} unreadable file(s) skipped)" if skipped else ""
    print(
        f"{len(runs)} saved run{'s' if len(runs) != 1 else ''} in"
        f" {saved.bench_dir(home)}{unreadable}"
    )
    return 0


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")  # bytes: CRLF stays CRLF


def _apply(cfg: Config, slot: str, value: int) -> dict[str, Any]:
    from familiar.fleetcheck.slotsedit import set_parallel
    from familiar.store import write_bytes_atomic

    path = cfg.slots_file
    before = _read(path)
    after = set_parallel(before, slot, value, source=str(path))
    if after != before:
        write_bytes_atomic(path, after.encode("utf-8"))
    return {"file": str(path), "slot": slot, "parallel": value, "changed": after != before}


def _compare(args: argparse.Namespace) -> int:
    from familiar.fleetcheck import saved
    from familiar.fleetcheck.report import compare_text

    extra = [
        name
        for name, value in (
            ("SLOT", args.slot),
            ("--concurrency", args.concurrency),
            ("--requests", args.requests),
            ("--input-tokens", args.input_tokens),
            ("--output-tokens", args.output_tokens),
            ("--prompts", args.prompts),
            ("--plot", args.plot),
            ("--repeat", args.repeat),
            ("--rate", args.rate),
        )
        if value is not None
    ] + [name for name, on in (("--save", args.save), ("--apply", args.apply)) if on]
    if extra:
        raise ConfigError(f"--compare takes two saved runs only, not {', '.join(extra)}")
    home = state_home(find_workspace(args.workspace))
    a, b = (saved.load(home, ref) for ref in args.compare)
    la, lb = saved.levels(a), saved.levels(b)
    if any(lv.rate is not None for lv in (*la, *lb)):
        raise ConfigError("--compare compares concurrency sweeps, not open-loop (--rate) runs")
    differ = saved.different_settings(a, b)
    if differ:
        what = "; ".join(differ)
        if not args.yes:
            raise ConfigError(
                f"--compare: the runs were measured with different settings ({what}):"
                " their figures are not comparable; add --yes to compare anyway"
            )
        _stderr(f"bench: warning: comparing runs of different settings ({what})")
    if args.json:
        print(json.dumps(_compare_json(a, la, b, lb), indent=2))
    else:
        print(compare_text(a, la, b, lb))
    return 0


def _compare_json(a: dict[str, Any], la: Any, b: dict[str, Any], lb: Any) -> dict[str, Any]:
    from familiar.fleetcheck.report import ratio

    before = {lv.concurrency: lv for lv in la}
    after = {lv.concurrency: lv for lv in lb}
    rows = []
    for c in sorted(set(before) & set(after)):
        x, y = before[c], after[c]
        rows.append(
            {
                "concurrency": c,
                "a": x.to_json(),
                "b": y.to_json(),
                "ratio": {
                    "output_tok_per_s": _float(ratio(x.output_tok_per_s, y.output_tok_per_s)),
                    "ttft_p99": _float(ratio(x.ttft.p99, y.ttft.p99)),
                    "tpot_p99": _float(ratio(x.tpot.p99, y.tpot.p99)),
                    "e2e_p99": _float(ratio(x.e2e.p99, y.e2e.p99)),
                },
            }
        )
    return {
        "a": {k: a.get(k) for k in ("id", "slot", "model", "runtime", "server", "started_at")},
        "b": {k: b.get(k) for k in ("id", "slot", "model", "runtime", "server", "started_at")},
        "levels": rows,
        "suggested_parallel": {"a": a.get("suggested_parallel"), "b": b.get("suggested_parallel")},
    }


def _float(text: str) -> float | None:
    return None if text == "-" else float(text)
