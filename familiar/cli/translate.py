"""``familiar translate``: article-translation batches from the command line."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from familiar.cli import signals
from familiar.config.workspace import load_config
from familiar.context import bound_correlation_id, new_correlation_id
from familiar.logs import set_details_log


def add_translate_command(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "translate",
        help="translate Markdown articles (Japanese <-> English)",
        description="Translate Markdown articles with the translator role's slot. Code, "
        "URLs, link targets, front matter keys and table structure are kept byte for "
        "byte; chunks are cached, so a rerun asks only for what is missing. Exit codes: "
        "0 every article translated, 1 any article failed, 2 usage error.",
    )
    common(p)
    p.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="Markdown files, or directories searched for *.md",
    )
    p.add_argument("--to", required=True, choices=("en", "ja"), help="target language")
    p.add_argument(
        "--from",
        dest="source",
        default="auto",
        choices=("auto", "en", "ja"),
        help="source language (default: detected per article)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output directory mirroring the input tree (default ./translated-<to>)",
    )
    p.add_argument("--in-place", action="store_true", help="overwrite the source files")
    p.add_argument("--glossary", type=Path, metavar="FILE", help="term pairs, TOML or TSV")
    p.add_argument(
        "--format",
        choices=("plamo", "chat", "fewshot"),
        default=None,
        help="prompt format (default: the slot's translate_format, else plamo for PLaMo "
        "models, else chat; fewshot suits base models)",
    )
    p.add_argument(
        "--chunk-tokens",
        type=int,
        default=None,
        metavar="N",
        help="prose per chunk (default: derived from the slot, at most 700)",
    )
    p.add_argument("--force", action="store_true", help="ignore the chunk cache")
    p.add_argument(
        "--json", action="store_true", help="print the per-article report as JSON on stdout"
    )
    p.add_argument(
        "--nats",
        metavar="URL",
        help="submit the batch to the NATS JetStream work queue at URL and collect the "
        "results: 'familiar worker --nats URL' runs the jobs, on any host",
    )
    p.add_argument("--roles", metavar="STRING", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_translate)


def cmd_translate(args: argparse.Namespace) -> int:
    from familiar.queue.service import submit_to_queue
    from familiar.translate.report import print_report
    from familiar.translate.service import prepare_batch, translate_files

    cfg = load_config(args.workspace, args.slots, args.roles)
    set_details_log(cfg.home / "logs" / "details.jsonl")  # long log lines: whole there
    batch = prepare_batch(
        cfg,
        args.paths,
        to=args.to,
        source=args.source,
        fmt=args.format,
        out_dir=args.out,
        in_place=args.in_place,
        force=args.force,
        chunk_tokens=args.chunk_tokens,
        glossary=args.glossary,
    )
    reports, errors = batch.reports, batch.errors
    batch_id = new_correlation_id()  # the batch's, in its report and its telemetry
    if not batch.files:  # nothing to translate: the error rows are the report
        print_report(errors, as_json=args.json, correlation_id=batch_id, quiet=_quiet(args))
        return 1
    progress = _progress_factory(reports, _quiet(args))
    try:
        with bound_correlation_id(batch_id):
            if args.nats:
                work = submit_to_queue(cfg, args.nats, batch.opts, batch.files, reports, progress)
            else:
                work = translate_files(
                    cfg, batch.settings, batch.opts, batch.files, reports, progress
                )
            signals.run(work)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM (Terminated)
        # the interpreter's last garbage collection walks every object the batch made
        # (0.3-0.7 s measured): exempt them, so an interrupted batch ends within a second
        gc.freeze()
        raise
    finally:
        # the report always prints once the batch ran, even interrupted (statuses say so)
        if not reports or any(r.status != "pending" for r in reports):
            reports += errors
            print_report(reports, as_json=args.json, correlation_id=batch_id, quiet=_quiet(args))
    return 0 if all(r.status in ("ok", "skipped") for r in reports) else 1


def _quiet(args: argparse.Namespace) -> bool:
    """-q anywhere on the command line (before or after the command)."""
    return any(v for k, v in vars(args).items() if k.split("_")[0] == "quiet")


def _progress_factory(reports: list[Any], quiet: bool) -> Callable[[], _progress]:
    return lambda: _progress(reports, quiet)


class _progress:
    """A rich progress bar on a terminal (articles, chunks, tokens/s); plain lines
    otherwise (``familiar.progress``: one per finished article, a heartbeat); nothing
    with -q."""

    def __init__(self, reports: list[Any], quiet: bool = False) -> None:
        self.reports = reports
        self.articles = len(reports)
        self.live = sys.stderr.isatty() and not quiet
        self.quiet = quiet
        self.plain: Any = None

    def __enter__(self) -> Callable[[str, int], None]:
        if self.quiet:
            return lambda _what, _n: None
        if not self.live:
            from familiar.progress import PlainProgress

            self.plain = PlainProgress(self.reports).__enter__()
            return self.plain  # type: ignore[no-any-return]
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            transient=False,
        )
        self.bar.__enter__()
        a = self.bar.add_task("articles", total=self.articles, rate="")
        c = self.bar.add_task("chunks", total=0, rate="")
        t0, tokens = time.monotonic(), [0]

        def update(what: str, n: int) -> None:
            if what == "article":
                self.bar.advance(a, n)
            elif what == "chunks-total":
                task = self.bar.tasks[c]
                self.bar.update(c, total=(task.total or 0) + n)
            elif what == "chunk":
                self.bar.advance(c, n)
            elif what == "tokens":
                tokens[0] += n
                rate = tokens[0] / max(time.monotonic() - t0, 1e-6)
                self.bar.update(c, rate=f"{rate:.0f} tok/s")

        return update

    def __exit__(self, *exc: object) -> None:
        if self.plain is not None:
            self.plain.__exit__(*exc)
        if self.live:
            self.bar.__exit__(None, None, None)
