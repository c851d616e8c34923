"""Translation batches as a service: what ``familiar translate`` and ``familiar worker``
both need, wired in one place.

:func:`open_batch` opens a batch's parts in their order (telemetry, anything the caller
adds such as the work queue, the fleet of translator slots on batch seats, then the state
directory and the chunk cache) and yields them with the translator pools;
:func:`translate_files` runs a local batch on them (``queue/service.py`` hands a batch to
the work queue and runs its worker over the same parts). The CLI parses, calls these and
maps errors to exit codes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    AsyncExitStack,
    asynccontextmanager,
)
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from familiar.config.roles import TRANSLATOR
from familiar.context import bound_correlation_id, correlation_id, new_correlation_id
from familiar.errors import ConfigError, StateError

if TYPE_CHECKING:
    from familiar.config.slots import Slot
    from familiar.config.workspace import Config
    from familiar.dispatch import Pool
    from familiar.fleet import Fleet
    from familiar.ledger import FleetSettings
    from familiar.telemetry import Telemetry
    from familiar.translate.cache import ChunkCache
    from familiar.translate.chunks import BatchOptions
    from familiar.translate.formats import FormatName
    from familiar.translate.report import ArticleReport

#: a batch's progress callback: (what, how many)
Progress = Callable[[str, int], None]
#: opens the progress display once the fleet stands
ProgressFactory = Callable[[], AbstractContextManager[Progress]]


def translator_roles(cfg: Config) -> tuple[str, ...]:
    """The active translator roles; ConfigError when there is none."""
    roles = cfg.role_config.of_kind(TRANSLATOR)
    if not roles:
        raise ConfigError(
            f"the translator role is not active in {cfg.role_config.canonical()!r}"
            " (familiar config use standard, or --roles)"
        )
    return roles


def translator_slots(cfg: Config) -> dict[str, Slot]:
    """Every slot serving a translator role, by name (checked: a key with surrounding
    whitespace is exit 2 before anything runs)."""
    slots = {s.name: s for r in translator_roles(cfg) for s in cfg.slots_for(r)}
    for slot in slots.values():
        slot.api_key()
    return slots


def batch_options(
    cfg: Config,
    *,
    to: str,
    source: str = "auto",
    fmt: FormatName | None = None,
    out_dir: Path | None = None,
    in_place: bool = False,
    force: bool = False,
    chunk_tokens: int | None = None,
    glossary: Path | None = None,
) -> BatchOptions:
    """A batch's options, with the defaults the first translator slot implies."""
    from familiar.translate.chunks import BatchOptions

    if in_place and out_dir:
        raise ConfigError("--in-place and --out exclude each other")
    if source != "auto" and source == to:
        raise ConfigError(f"--from and --to are both {to}")
    slot = cfg.slots_for(translator_roles(cfg)[0])[0]
    chosen: FormatName = (
        fmt or slot.translate_format or ("plamo" if "plamo" in slot.model.lower() else "chat")
    )
    tokens = chunk_tokens or min(700, max(128, (slot.max_tokens or 2048) // 3))
    if tokens < 32:
        raise ConfigError("--chunk-tokens must be at least 32")
    return BatchOptions(
        to=to,
        source_lang=source,
        fmt=chosen,
        out_dir=out_dir,
        in_place=in_place,
        force=force,
        chunk_tokens=tokens,
        glossary=_glossary(glossary) if glossary else {},
    )


def _glossary(path: Path) -> dict[str, str]:
    """The glossary file's term pairs; a FIFO, device or loop is exit 2, never a wait."""
    from familiar.translate.files import not_regular
    from familiar.translate.glossary import load_glossary

    if path.exists() or path.is_symlink():
        reason = not_regular(path)
        if reason is not None:
            raise ConfigError(f"--glossary {path}: {reason}")
    return load_glossary(path)


@dataclass(frozen=True)
class PreparedBatch:
    """A batch checked before any server is asked: its options, the ledger settings, the
    articles (source, output), a pending report row per article, and the error rows of
    paths that cannot be translated (reported with the rest)."""

    opts: BatchOptions
    settings: FleetSettings
    files: list[tuple[Path, Path]]
    reports: list[ArticleReport]
    errors: list[ArticleReport]


def prepare_batch(
    cfg: Config,
    paths: Sequence[Path],
    *,
    to: str,
    source: str = "auto",
    fmt: FormatName | None = None,
    out_dir: Path | None = None,
    in_place: bool = False,
    force: bool = False,
    chunk_tokens: int | None = None,
    glossary: Path | None = None,
) -> PreparedBatch:
    """Everything checked (roles, keys, options, the ledger's URL, the articles and their
    outputs: an output on a source is exit 2) before anything is made or asked."""
    from familiar.progress import heartbeat_seconds
    from familiar.translate.files import check_targets, default_out_dir, discover
    from familiar.translate.report import ArticleReport

    translator_slots(cfg)  # no translator role, or a bad key: exit 2 before anything runs
    # a path that is not there is its row; a dangling symlink or a loop is discovery's
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    opts = batch_options(
        cfg,
        to=to,
        source=source,
        fmt=fmt,
        out_dir=out_dir,
        in_place=in_place,
        force=force,
        chunk_tokens=chunk_tokens,
        glossary=glossary,
    )
    settings = cfg.fleet.resolved()  # a bad FAMILIAR_NATS_URL: exit 2, nothing made
    roots = [p for p in paths if p.exists() or p.is_symlink()]
    problems: list[tuple[Path, str]] = []
    # a default output tree inside an input directory is never taken as input
    files = discover(roots, skip=() if out_dir else (default_out_dir(to),), problems=problems)
    if not files and not missing and not problems:
        raise ConfigError("no Markdown files found under the given paths")
    check_targets(roots, files, to=opts.to, out_dir=opts.out_dir, in_place=opts.in_place)
    reports = [ArticleReport(path=str(f)) for f, _ in files]
    errors = [ArticleReport(path=m, status="error", error="no such file") for m in missing]
    errors += [ArticleReport(path=str(f), status="error", error=why) for f, why in problems]
    heartbeat_seconds()  # a bad FAMILIAR_HEARTBEAT_S: exit 2 before anything runs
    return PreparedBatch(opts, settings, files, reports, errors)


def check_nats_url(url: str) -> str:
    """``--nats`` checked as the ledger checks its URL (a ConfigError otherwise)."""
    from familiar.ledger import FleetSettings

    try:
        checked = FleetSettings._check_url(url)
    except ValueError as exc:
        raise ConfigError(f"--nats: {exc}") from None
    if checked is None:
        raise ConfigError("--nats needs a URL, nats://HOST:PORT")
    return checked


def check_home(home: Path) -> None:
    """StateError (exit 2) when FAMILIAR_HOME can never be made (a file where a directory
    should be, a parent not writable); checked without creating anything."""
    for at in (home, *home.parents):
        if not at.exists():
            continue
        if not at.is_dir():
            raise StateError(f"state directory {home}: {at} is not a directory")
        if at != home and not os.access(at, os.W_OK | os.X_OK):
            raise StateError(f"state directory {home}: cannot create it in {at}")
        return


def warn(message: str) -> None:
    print(f"familiar: warning: {message}", file=sys.stderr)


@dataclass(frozen=True)
class BatchParts:
    """An open translation batch: its telemetry, fleet, translator pools and cache."""

    telemetry: Telemetry
    fleet: Fleet
    pools: list[Pool]
    cache: ChunkCache


@asynccontextmanager
async def open_batch(
    cfg: Config,
    settings: FleetSettings,
    *,
    before_fleet: AbstractAsyncContextManager[Any] | None = None,
    more_slots: Mapping[str, Slot] | None = None,
) -> AsyncIterator[BatchParts]:
    """Telemetry, ``before_fleet`` (e.g. the work queue), the fleet of translator slots
    (and ``more_slots``: the queue's worker adds the active ones, for batch requests) on
    batch seats (``settings``: the ledger), the state directory (made once the fleet
    stands: a configuration error leaves FAMILIAR_HOME as it was), the chunk cache."""
    from familiar.fleet import Fleet
    from familiar.ledger import make_ledger
    from familiar.telemetry import Telemetry
    from familiar.translate.cache import ChunkCache

    slots = {**(more_slots or {}), **translator_slots(cfg)}
    ledger = make_ledger(settings)
    check_home(cfg.home)
    async with AsyncExitStack() as stack:
        telemetry = await stack.enter_async_context(Telemetry(cfg.home))
        if before_fleet is not None:
            await stack.enter_async_context(before_fleet)
        fleet = await stack.enter_async_context(
            Fleet(slots, home=cfg.home, hooks=[telemetry.hook], ledger=ledger, kind="batch")
        )
        try:
            cfg.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"state directory {cfg.home}: {exc.strerror or exc}") from None
        cache = ChunkCache(cfg.home / "cache" / "chunks.sqlite", warn=warn)
        stack.callback(cache.close)
        pools = [
            pool
            for role in translator_roles(cfg)
            for pool in fleet.pools(cfg, role, queue=TRANSLATOR)
        ]
        yield BatchParts(telemetry, fleet, pools, cache)


async def translate_files(
    cfg: Config,
    settings: FleetSettings,
    opts: BatchOptions,
    files: list[tuple[Path, Path]],
    reports: list[ArticleReport],
    progress: ProgressFactory,
) -> list[ArticleReport]:
    """A local batch: every article of ``files`` translated, ``reports`` filled in."""
    from familiar.translate.batch import Translator

    with bound_correlation_id(correlation_id.get() or new_correlation_id()):
        async with open_batch(cfg, settings) as batch:
            with progress() as shown:
                translator = Translator(
                    batch.pools, opts, batch.cache, telemetry=batch.telemetry, progress=shown
                )
                return await translator.run(files, reports)
