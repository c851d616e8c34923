"""``familiar fleet``: every deployment's seats in the ledger, who holds them, who waits."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from familiar.cli import signals
from familiar.config.workspace import Config, load_config
from familiar.ledger import DeploymentView, Ledger, deployment_id, make_ledger


def add_fleet_command(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "fleet",
        help="seats per deployment across every familiar process: cap, in use, holders",
        description="Show the seat ledger every familiar process shares (the host ledger, or"
        " NATS JetStream when FAMILIAR_NATS_URL or [fleet] nats_url is set): per deployment"
        " its cap, the seats in use and who holds them (host, pid, command), and how many"
        " processes wait. Live deployments come first; one that no live process holds, waits"
        " for or has open is hidden unless --all.",
    )
    common(p)
    p.add_argument(
        "--all",
        action="store_true",
        help="also show deployments no live process uses (records of finished processes)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the ledger and its deployments as JSON on stdout"
    )
    p.set_defaults(func=cmd_fleet)


def cmd_fleet(args: argparse.Namespace) -> int:
    cfg = load_config(workspace=args.workspace, slots=args.slots)
    ledger = make_ledger(cfg.fleet)
    views, hidden = shown(signals.run(_views(ledger)), everything=args.all)
    names = _slot_names(cfg)
    if args.json:
        out = {
            "ledger": {"kind": ledger.kind, "where": ledger.where},
            "deployments": [
                {**v.to_json(), "live": live(v), "slots": names.get(v.id, [])} for v in views
            ],
            "hidden": hidden,
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"ledger: {ledger.kind} ({ledger.where})")
    if not views:
        print(
            f"no live deployment; {hidden} with no live process hidden (--all shows them)"
            if hidden
            else "no deployment has been used through this ledger yet"
        )
        return 0
    now = time.time()
    for v in views:
        slots = ", ".join(names.get(v.id, [])) or "-"
        reserve = f", {v.reserve} reserved for sessions" if v.reserve else ""
        print(
            f"{v.label}  [slots: {slots}]  in use {v.in_use}/{v.effective_cap}{reserve},"
            f" {len(v.waiting)} process(es) waiting"
        )
        if v.disagree:
            caps = ", ".join(str(c) for c in sorted(v.live_caps))
            print(
                f"  live processes disagree on parallel ({caps}):"
                f" the strictest, {v.effective_cap}, applies"
            )
        for seat, h in sorted(v.holders.items()):
            held = f"{now - h.since:.0f}s" if h.since else "?"
            print(f"  seat {seat}: {h.host} pid {h.pid} ({h.kind}, {held}) {h.command}")
        for h in v.waiting:
            print(f"  waiting: {h.host} pid {h.pid} ({h.kind}) {h.command}")
    in_use = sum(v.in_use for v in views)
    waiting = sum(len(v.waiting) for v in views)
    print(
        f"{len(views)} deployment(s): {in_use} seat(s) in use of"
        f" {sum(v.effective_cap for v in views)}, {waiting} process(es) waiting"
    )
    if hidden:
        print(f"{hidden} deployment(s) with no live process hidden (--all shows them)")
    sys.stdout.flush()
    return 0


def live(view: DeploymentView) -> bool:
    """Whether a live process holds a seat of ``view``, waits for one or has it open (its
    cap is advertised); a finished process's record is none of these."""
    return bool(view.holders or view.waiting or view.live_caps)


def shown(views: list[DeploymentView], *, everything: bool) -> tuple[list[DeploymentView], int]:
    """The views to show, live ones first (stable order otherwise), and how many were hidden
    (those with no live process, unless ``everything``)."""
    ordered = sorted(views, key=lambda v: not live(v))
    kept = ordered if everything else [v for v in ordered if live(v)]
    return kept, len(views) - len(kept)


async def _views(ledger: Ledger) -> list[DeploymentView]:
    async with ledger:
        return await ledger.views()


def _slot_names(cfg: Config) -> dict[str, list[str]]:
    """Deployment id -> the slot names of this configuration that name it."""
    out: dict[str, list[str]] = {}
    local: str | None = None
    if any(s.embedded for s in cfg.slots.values()):
        from familiar.local import LocalServer

        info = LocalServer(cfg.home).status()
        local = info.base_url if info is not None else None
    for slot in cfg.slots.values():
        urls = slot.url if not slot.embedded else (local,) if local else None
        if urls:
            out.setdefault(deployment_id(urls, slot.model), []).append(slot.name)
    return out
