"""The files of a batch: finding articles, where translations go, reading and writing.

Sources are never overwritten unless ``--in-place``: :func:`check_targets` refuses (a
``ConfigError``, before anything is written) an output directory equal to or inside an
input directory, and any output path that is an input file (same resolved path, or the
same file through a hard link). Output trees are never taken as input: discovery skips
hidden directories (``.git/``, ``.familiar/``) and the directories it is told to skip
(the default ``./translated-<to>`` when it lies inside an input directory).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from familiar.errors import ArticleError, ConfigError
from familiar.store import write_text_atomic


def default_out_dir(to: str) -> Path:
    return Path.cwd() / f"translated-{to}"


def discover(
    paths: Sequence[Path],
    *,
    skip: Iterable[Path] = (),
    problems: list[tuple[Path, str]] | None = None,
) -> list[tuple[Path, Path]]:
    """(file, path relative to its root) for files given and ``*.md`` under dirs.

    Under a directory, hidden directories and the directories in ``skip`` are not searched.
    Only regular files are taken (through symlinks): a FIFO, socket or device, a symlink
    loop, a dangling symlink and a directory that cannot be listed are each one
    ``(path, reason)`` in ``problems`` (the caller's error rows), never opened, never a
    wait. Nothing here blocks: only ``stat`` and directory listings.
    """
    skipped = {s.resolve() for s in skip}
    found: list[tuple[Path, Path]] = []
    bad = problems if problems is not None else []
    for p in paths:
        if not p.is_dir():
            reason = not_regular(p)
            if reason is None:
                found.append((p, Path(p.name)))
            else:
                bad.append((p, reason))
            continue
        found += [(f, f.relative_to(p)) for f in _walk(p, skipped, bad)]
    return found


def _walk(root: Path, skipped: set[Path], bad: list[tuple[Path, str]]) -> list[Path]:
    """The regular ``*.md`` files under ``root``, sorted; the rest into ``bad``."""
    under: list[Path] = []

    def unlisted(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        bad.append((where, f"cannot list directory: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted):
        here = Path(dirpath)
        dirnames[:] = [
            d for d in dirnames if not d.startswith(".") and _searched(here / d, skipped)
        ]
        for name in filenames:
            if not name.endswith(".md"):
                continue
            reason = not_regular(here / name)
            if reason is None:
                under.append(here / name)
            else:
                bad.append((here / name, reason))
    return sorted(under)


def _searched(d: Path, skipped: set[Path]) -> bool:
    try:
        return d.resolve() not in skipped
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return True  # os.walk does not follow it; nothing to skip


def not_regular(path: Path) -> str | None:
    """Why ``path`` is not an article to read (one line), or None for a regular file."""
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if exc.errno == errno.ENOENT and path.is_symlink():
            return "dangling symlink"
        return f"cannot read: {exc.strerror or exc}"
    return None if stat.S_ISREG(st.st_mode) else f"not a regular file ({_kind(st.st_mode)})"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a file"


def output_path(src: Path, rel: Path, *, to: str, out_dir: Path | None, in_place: bool) -> Path:
    if in_place:
        return src
    return (out_dir or default_out_dir(to)) / rel


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _resolve(path: Path) -> Path:
    """``path.resolve()``; a symlink loop on the way is a ConfigError naming it."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a loop, before Python 3.13
        raise ConfigError(f"{path}: symlink loop (or a path that cannot be resolved)") from None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_targets(
    roots: Sequence[Path],
    files: Sequence[tuple[Path, Path]],
    *,
    to: str,
    out_dir: Path | None,
    in_place: bool,
) -> None:
    """ConfigError unless every translation lands off the sources (see the module doc)."""
    if in_place:
        return
    if out_dir is not None:
        resolved = _resolve(out_dir)
        for root in roots:
            if root.is_dir() and _inside(resolved, _resolve(root)):
                where = "" if resolved == _resolve(root) else "inside "
                raise ConfigError(
                    f"--out {out_dir} is {where}the input directory {root}: translations would"
                    " mix with the sources (choose a directory outside it, or --in-place)"
                )
    by_path = {_resolve(src): src for src, _ in files}
    by_id = {ident: src for src, _ in files if (ident := _identity(src)) is not None}
    targets: dict[Path, Path] = {}
    for src, rel in files:
        out = output_path(src, rel, to=to, out_dir=out_dir, in_place=False)
        resolved = _resolve(out)
        ident = _identity(out)
        source = by_path.get(resolved) or (by_id.get(ident) if ident is not None else None)
        if source is not None:
            raise ConfigError(
                f"the translation of {src} would overwrite the source {source} (at {out});"
                " choose another --out, or --in-place"
            )
        if resolved in targets:
            raise ConfigError(
                f"{targets[resolved]} and {src} would both be written to {out};"
                " translate them in separate runs"
            )
        targets[resolved] = src


def read_article(path: Path) -> str:
    """The text of a UTF-8 Markdown file, or ArticleError with a one-line reason.

    Opened without blocking (``O_NONBLOCK``: a FIFO put in the file's place after
    discovery would otherwise wait for a writer forever) and read only if it is a regular
    file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArticleError("symlink loop") from None
        raise ArticleError(f"cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ArticleError(f"not a regular file ({_kind(mode)})")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read()
    except OSError as exc:
        raise ArticleError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if not data or data.isspace():  # (no strip(): a copy of a 50 MB file)
        raise ArticleError("empty file")
    if b"\x00" in data[:8192]:
        raise ArticleError("binary file, not Markdown")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        hint = ""
        for enc in ("shift_jis", "euc_jp"):
            try:
                data.decode(enc)
                hint = f" (looks like {enc.replace('_', '-').upper()}; convert it to UTF-8)"
                break
            except UnicodeDecodeError:
                continue
        raise ArticleError(f"not UTF-8{hint}") from None


def write_article(path: Path, text: str | Iterable[str]) -> None:
    """Write a translation (or its pieces, in order) atomically, or ArticleError naming
    the path."""
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise ArticleError(f"cannot write {path}: {exc.strerror or exc}") from exc
