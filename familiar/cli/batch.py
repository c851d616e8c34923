"""``familiar batch``: OpenAI Batch JSONL through the fleet (thin: parse, call, print)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from familiar.cli import signals
from familiar.config.workspace import load_config
from familiar.errors import ConfigError


def add_batch_command(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "batch",
        help="run OpenAI Batch JSONL requests through the fleet",
        description="Send every request of an OpenAI Batch API JSONL file (custom_id, "
        "method, url /v1/chat/completions or /v1/completions, body) to the fleet under "
        "its seat caps, and write one result line per request in the OpenAI batch output "
        "format as each finishes. A rerun asks only for requests without a result line "
        "(failed ones are asked again). With --nats the requests go onto the JetStream "
        "work queue in groups of a few dozen and 'familiar worker --nats URL' processes on "
        "any host answer them on their own slots; the files, the resume and the exit code "
        "are the same. Exit codes: 0 every request answered, 1 any failed, 2 usage error "
        "(e.g. a duplicate custom_id: nothing is sent).",
        epilog="examples:\n"
        "  familiar batch requests.jsonl --out results.jsonl --role kindergarten\n"
        "  familiar batch requests.jsonl --out results.jsonl --errors errors.jsonl\n"
        "      (each line's body.model names a role or slot)\n"
        "  familiar batch requests.jsonl --out results.jsonl --nats nats://HOST:4222\n"
        "      (answered by the 'familiar worker --nats nats://HOST:4222' processes)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument("requests", type=Path, metavar="REQUESTS.jsonl", help="the request lines")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="the result lines")
    p.add_argument("--errors", type=Path, metavar="FILE", help="error lines here, not in --out")
    p.add_argument("--role", metavar="ROLE", help="send every request to ROLE's slot")
    p.add_argument("--slot", metavar="SLOT", help="send every request to SLOT")
    p.add_argument("--force", action="store_true", help="ask everything again (results emptied)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument(
        "--nats",
        metavar="URL",
        help="hand the requests to the NATS JetStream work queue at URL in groups and "
        "collect the result lines: 'familiar worker --nats URL' answers them, on any host",
    )
    p.add_argument(
        "--group-size",
        type=_group_size,
        default=None,
        metavar="N",
        help="with --nats: requests per queued job (default 32; fewer when their text "
        "passes 256 KiB)",
    )
    p.set_defaults(func=cmd_batch)


def _group_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000, not {value}")
    return value


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: by path, symlink or hard link (emptying
    one in place would empty the other)."""
    try:
        return a.exists() and (a.resolve() == b.resolve() or os.path.samefile(a, b))
    except OSError:
        return False


def cmd_batch(args: argparse.Namespace) -> int:
    from familiar.batch import BatchOptions, check_input, progress_printer, run_batch

    src: Path = args.requests
    if args.group_size is not None and not args.nats:
        raise ConfigError("--group-size sizes the jobs of --nats: give --nats URL too")
    if not src.is_file():
        raise ConfigError(f"{src}: no such file (the requests, one JSON object per line)")
    for target in (args.out, args.errors):
        if target is not None and _same_file(target, src):
            raise ConfigError(f"{target} is the requests file itself: results go elsewhere")
    if args.errors is not None and (
        args.errors.resolve() == args.out.resolve() or _same_file(args.errors, args.out)
    ):
        raise ConfigError("--errors and --out name the same file")
    cfg = load_config(args.workspace, args.slots, None)
    total = check_input(src)
    from familiar.batch.run import check_outputs, output_lock

    check_outputs(args.out, args.errors)  # before any server is asked
    opts = BatchOptions(src, args.out, args.errors, args.role, args.slot, args.force)
    queue: dict[str, int] | None = None
    with output_lock(args.out):  # one batch at a time writes these results
        if args.nats:
            from familiar.queue.service import submit_requests

            work = submit_requests(
                cfg, args.nats, opts, total, progress_printer(total), group_size=args.group_size
            )
            cid, counts, queue = signals.run(work)
        else:
            cid, counts = signals.run(run_batch(cfg, opts, total, progress_printer(total)))
    report: dict[str, Any] = {"correlation_id": cid, **counts.summary(), "out": str(args.out)}
    if queue is not None:
        report["queue"] = queue
    if args.errors is not None:
        report["errors"] = str(args.errors)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"batch {cid}: {counts.ok} ok, {counts.failed} failed, {counts.skipped} already"
            f" done of {counts.total}; results in {args.out}",
            file=sys.stderr,
        )
    unread = counts.total - (counts.ok + counts.failed + counts.skipped)
    if unread > 0:  # counted up front, never read: the file was cut meanwhile
        print(
            f"familiar batch: {unread} requests of {src} were not read: the file changed"
            " during the batch; rerun to ask them",
            file=sys.stderr,
        )
    return 0 if counts.failed == 0 and unread <= 0 else 1
