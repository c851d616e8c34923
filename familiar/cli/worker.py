"""``familiar worker``: run translation jobs and batch request groups from the NATS
JetStream work queue."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from familiar.cli import signals
from familiar.config.workspace import load_config
from familiar.logs import set_details_log

#: SIGTERM or Ctrl-C ends a worker within this long whatever its connections are doing
#: (a job it could not hand back is redelivered after the consumer's ack_wait)
STOP_WITHIN_S = 8.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 1.0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"must be between 1 and 86400 s, not {value:g}")
    return value


def _count(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    return parse


def add_worker_command(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "worker",
        help="run translation jobs and batch requests from a NATS JetStream work queue on "
        "this host's slots",
        description="Take translation jobs (submitted by 'familiar translate --nats URL') and "
        "request groups (submitted by 'familiar batch --nats URL') off the queue and run them "
        "on this host's slots (the translator's; for batch requests the slot of the batch's "
        "--role/--slot or of each request's body.model, in this host's slots file), until "
        "stopped (Ctrl-C or SIGTERM: running jobs go back to the queue at once). Results and "
        "finished chunks are stored in JetStream; a worker never needs the submitter's "
        "files.",
    )
    common(p)
    p.add_argument(
        "--nats", required=True, metavar="URL", help="the NATS server(s), nats://HOST:PORT"
    )
    p.add_argument(
        "--jobs",
        type=_count(1),
        default=None,
        metavar="N",
        help="articles at once (default: twice the translator's seats, at least 4)",
    )
    p.add_argument(
        "--ack-wait",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="a job whose worker went silent this long goes to another (default 30)",
    )
    p.add_argument(
        "--max-deliver",
        type=_count(2),
        default=4,
        metavar="N",
        help="deliveries before a job counts as failed (default 4: three tries)",
    )
    p.add_argument("--roles", metavar="STRING", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from familiar.queue.service import run_worker
    from familiar.translate.service import check_nats_url, translator_slots

    cfg = load_config(args.workspace, args.slots, args.roles)
    set_details_log(cfg.home / "logs" / "details.jsonl")  # long log lines: whole there
    translator_slots(cfg)  # no translator role, or a bad key: exit 2 before anything runs
    url = check_nats_url(args.nats)
    work = run_worker(
        cfg,
        url,
        ack_wait_s=args.ack_wait,
        max_deliver=args.max_deliver,
        jobs_at_once=args.jobs,
        announce=None if _quiet(args) else _announce,
    )
    signals.run(work, stop_within_s=STOP_WITHIN_S)
    return 0


def _quiet(args: argparse.Namespace) -> bool:
    """-q anywhere on the command line (before or after the command)."""
    return any(v for k, v in vars(args).items() if k.split("_")[0] == "quiet")


def _announce(line: str) -> None:
    print(f"familiar: {line}", file=sys.stderr, flush=True)
