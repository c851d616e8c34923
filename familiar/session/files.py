"""Files a session writes: paths a model chose, checked; file sets merged; the tree
written to ``--out``; the workspace changed only with ``--apply``.

A path is a model's choice, so it is never trusted (house rule 16): it must be relative,
normalised, free of ``..``, outside ``.git/`` and familiar's state, and it must not
reach through a symlink out of the workspace. :func:`refused` says why a path cannot be
written; :func:`check_files` applies it to a whole answer.

``--apply`` writes the session's files into the workspace, refusing (one line, exit 2)
to overwrite a file with uncommitted changes (or any existing file outside a git
repository, where nothing else could restore it) unless ``--force``, and records a
unified diff of what it changed in the session directory so it can be undone.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import posixpath
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from familiar.errors import ConfigError, StateError
from familiar.store import write_text_atomic

#: a single file a model writes may not be larger than this
MAX_FILE_CHARS = 1_000_000
MAX_FILES = 16


@dataclass(frozen=True)
class FileOut:
    """One file a session writes: its workspace-relative path, whole contents, and who
    wrote it (a subtask id, or ``integrator``)."""

    path: str
    content: str
    writer: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode("utf-8")).hexdigest()

    def record(self) -> dict[str, Any]:
        return {"path": self.path, "content": self.content, "writer": self.writer}


@dataclass(frozen=True)
class FilesPolicy:
    """Where a session's files may go: under ``root``, never into ``forbidden``."""

    root: Path
    forbidden: tuple[Path, ...] = ()

    def check(
        self, files: Iterable[Mapping[str, Any]], writer: str
    ) -> tuple[list[FileOut], str | None]:
        return check_files(files, self.root, self.forbidden, writer)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def normalise(raw: str) -> str:
    """The canonical spelling of a relative path (``./a//b`` -> ``a/b``)."""
    return posixpath.normpath(raw.strip()).lstrip("/") if raw.strip() else ""


def refused(raw: str, root: Path, forbidden: Sequence[Path] = ()) -> str | None:
    """Why a model's path cannot be written under ``root`` (None: it can). ``forbidden``
    are directories inside the workspace that belong to familiar (its state)."""
    if not raw.strip():
        return "an empty path"
    if "\0" in raw or any(ord(c) < 32 for c in raw):
        return f"path {raw!r} holds control characters"
    if "\\" in raw:
        return f"path {raw!r} uses backslashes (write paths with '/')"
    if raw.startswith(("/", "~")) or (len(raw) > 1 and raw[1] == ":"):
        return f"path {raw!r} is absolute (give a path relative to the workspace)"
    parts = raw.split("/")
    if ".." in parts:
        return f"path {raw!r} leaves the workspace (..)"
    rel = normalise(raw)
    if rel in ("", "."):
        return f"path {raw!r} names the workspace itself"
    if ".git" in rel.split("/"):
        return f"path {raw!r} is inside .git/"
    root = root.resolve()
    target = root / rel
    for state in forbidden:
        if _inside(target, state.resolve()) or _inside(Path(os.path.abspath(target)), state):
            return f"path {raw!r} is inside familiar's state ({state})"
    try:
        real = target.resolve()
    except (OSError, RuntimeError):
        return f"path {raw!r} goes through a looping link"
    if not _inside(real, root):
        return f"path {raw!r} goes through a symlink that leaves the workspace"
    for state in forbidden:
        if _inside(real, state.resolve()):
            return f"path {raw!r} is inside familiar's state ({state})"
    if real.is_dir():
        return f"path {raw!r} is a directory"
    return None


def check_files(
    files: Iterable[Mapping[str, Any]], root: Path, forbidden: Sequence[Path], writer: str
) -> tuple[list[FileOut], str | None]:
    """An answer's files, normalised; and why they cannot be kept (None: they can)."""
    out: list[FileOut] = []
    seen: set[str] = set()
    for item in files:
        raw, content = item.get("path"), item.get("content")
        if not isinstance(raw, str) or not isinstance(content, str):
            return out, "every file needs a string path and string content"
        why = refused(raw, root, forbidden)
        if why is not None:
            return out, why
        rel = normalise(raw)
        if rel in seen:
            return out, f"path {rel!r} is written twice in one answer"
        if len(content) > MAX_FILE_CHARS:
            return out, f"file {rel!r} is larger than {MAX_FILE_CHARS:,} characters"
        seen.add(rel)
        out.append(FileOut(rel, content, writer))
    if len(out) > MAX_FILES:
        return out, f"at most {MAX_FILES} files per answer, got {len(out)}"
    return out, None


@dataclass(frozen=True)
class Merged:
    """The session's file set, and the paths several subtasks wrote (-> who won)."""

    files: tuple[FileOut, ...]
    conflicts: Mapping[str, tuple[str, ...]]


def merge(per_writer: Sequence[Sequence[FileOut]], decided: Sequence[FileOut] = ()) -> Merged:
    """Every writer's files in plan order; a path written by several is a conflict whose
    version is the integrator's (``decided``) when it gave one, else the last writer's."""
    by_path: dict[str, FileOut] = {}
    writers: dict[str, list[str]] = {}
    for files in per_writer:
        for f in files:
            by_path[f.path] = f
            writers.setdefault(f.path, []).append(f.writer)
    for f in decided:
        by_path[f.path] = f
    conflicts = {p: tuple(w) for p, w in writers.items() if len(w) > 1}
    return Merged(tuple(by_path[p] for p in sorted(by_path)), conflicts)


def write_tree(files: Iterable[FileOut], root: Path) -> list[Path]:
    """The files under ``root`` (created as needed), atomically each."""
    written = []
    for f in files:
        target = root / f.path
        write_text_atomic(target, f.content)
        written.append(target)
    return written


# -- applying to the workspace ---------------------------------------------------------------


def _git_dirty(root: Path, paths: Sequence[str]) -> set[str] | None:
    """The paths with uncommitted changes (modified, staged or untracked), or None when
    ``root`` is not inside a git work tree (or git is not installed)."""
    try:
        inside = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "-z", "--", *paths],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if status.returncode != 0:
        return None
    dirty: set[str] = set()
    for entry in status.stdout.decode("utf-8", "replace").split("\0"):
        if len(entry) > 3:
            dirty.add(entry[3:])
    return dirty


def unified_diff(path: str, old: str | None, new: str) -> str:
    return "".join(
        difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile="/dev/null" if old is None else f"a/{path}",
            tofile=f"b/{path}",
        )
    )


def plan_apply(
    files: Sequence[FileOut], root: Path, *, force: bool
) -> list[tuple[FileOut, str | None]]:
    """Each file with the workspace's current text (None: a new file); ConfigError (exit
    2, nothing written) when one would overwrite uncommitted work and ``force`` is off."""
    current: list[tuple[FileOut, str | None]] = []
    existing: list[str] = []
    for f in files:
        target = root / f.path
        if target.is_file():
            try:
                current.append((f, target.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"--apply: cannot read {target}: {exc}") from None
            existing.append(f.path)
        else:
            current.append((f, None))
    if existing and not force:
        dirty = _git_dirty(root, existing)
        if dirty is None:
            raise ConfigError(
                f"--apply would overwrite {len(existing)} existing file(s) in a workspace"
                f" that is not a git repository ({', '.join(existing)}); add --force"
            )
        changed = sorted(p for p in existing if p in dirty)
        if changed:
            raise ConfigError(
                f"--apply would overwrite uncommitted changes in {', '.join(changed)}"
                " (commit or stash them, or add --force)"
            )
    return current


def apply(files: Sequence[FileOut], root: Path, session_dir: Path, *, force: bool) -> str:
    """Write the files into the workspace; the unified diff of the change (also saved as
    ``apply.diff`` in the session directory, so ``git apply -R`` undoes it)."""
    planned = plan_apply(files, root, force=force)
    diff = "".join(unified_diff(f.path, old, f.content) for f, old in planned if old != f.content)
    try:
        write_text_atomic(session_dir / "apply.diff", diff)
    except OSError as exc:
        raise StateError(f"cannot record {session_dir / 'apply.diff'}: {exc}") from None
    for f, old in planned:
        if old != f.content:
            write_text_atomic(root / f.path, f.content)
    return diff
