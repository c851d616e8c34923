"""One process of ``benchmarks/ledger.py``'s sharing run: ``--calls`` chat calls with
``--cap`` in flight, seats held in the chosen ledger; prints per-call figures as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import _common  # noqa: F401 - puts the repo on sys.path

from familiar.client.backend import CallEvent, SlotClient
from familiar.config.slots import Slot
from familiar.ledger import HostLedger, Ledger, deployment_id, deployment_label
from familiar.seats import Seats

MSG = [{"role": "user", "content": "benchmark"}]


async def main(args: argparse.Namespace) -> None:
    ledger: Ledger
    if args.ledger == "host":
        ledger = HostLedger()
    else:
        from familiar.ledger.nats import NatsLedger

        ledger = NatsLedger(args.nats)
    events: list[CallEvent] = []
    slot = Slot(name="bench", url=args.url, model="m", parallel=args.cap)
    async with ledger:
        dep = ledger.deployment(
            deployment_id(slot.url, slot.model), deployment_label(slot.url, slot.model), args.cap
        )
        async with SlotClient(slot, seats=Seats(args.cap, ledger=dep), hooks=[events.append]) as c:
            await c.chat(MSG)  # connected and warm before the common start
            events.clear()
            await asyncio.sleep(max(0.0, args.start_at - time.time()))
            t_start = time.time()
            await asyncio.gather(*(c.chat(MSG) for _ in range(args.calls)))
            t_end = time.time()
    print(
        json.dumps(
            {
                "t_start": t_start,
                "t_end": t_end,
                "latency_s": [e.latency_s for e in events],
                "ledger_wait_s": [e.ledger_wait_s for e in events],
                "wait_s": [e.queue_wait_s for e in events],
            }
        )
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--cap", type=int, required=True)
    p.add_argument("--calls", type=int, required=True)
    p.add_argument("--ledger", choices=["host", "nats"], required=True)
    p.add_argument("--nats")
    p.add_argument("--start-at", type=float, required=True)
    asyncio.run(main(p.parse_args()))
