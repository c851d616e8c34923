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
from familiar.store import write_bytes_atomic, write_text_atomic

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
    return path.is_relative_to(root)


def normalise(raw: str) -> str:
    """The canonical spelling of a relative path (``./a//b`` -> ``a/b``)."""
    return posixpath.normpath(raw.strip()).lstrip("/") if raw.strip() else ""


#: familiar's own configuration in a workspace: a model may not rewrite it
OWN_FILES = frozenset({"claude.md", "slots.toml"})
OWN_DIRS = frozenset({"roles", "prompts"})
_NAME_MAX = 255
_PATH_MAX = 4000


def _is_git(part: str) -> bool:
    return part.lower() == ".git"  # case-insensitive filesystems see .GIT as .git


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
    names = rel.split("/")
    if len(rel.encode()) > _PATH_MAX or any(len(n.encode()) > _NAME_MAX for n in names):
        return f"path {rel[:60]!r}... is longer than a file system allows"
    if any(_is_git(n) for n in names):
        return f"path {raw!r} is inside .git/"
    if rel.lower() in OWN_FILES or (names[0].lower() in OWN_DIRS and len(names) > 1):
        return f"path {raw!r} is familiar's own configuration"
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
    if any(_is_git(n) for n in real.relative_to(root).parts):
        return f"path {raw!r} leads into .git/ through a link"
    for state in forbidden:
        if _inside(real, state.resolve()):
            return f"path {raw!r} is inside familiar's state ({state})"
    if real.is_dir():
        return f"path {raw!r} is a directory"
    above = real.parent
    while above != root and not above.exists():
        above = above.parent
    if not above.is_dir():
        return f"path {raw!r} goes through {above.relative_to(root)}, which is a file"
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

    def put(f: FileOut) -> None:
        # a file where another writer put a directory (or the other way round): the
        # later one wins, recorded as a conflict on both paths
        for other in [
            p for p in by_path if p.startswith(f.path + "/") or f.path.startswith(p + "/")
        ]:
            gone = by_path.pop(other)
            writers.setdefault(f.path, []).append(gone.writer)
            writers.setdefault(other, []).append(f.writer)
        by_path[f.path] = f

    for files in per_writer:
        for f in files:
            put(f)
            writers.setdefault(f.path, []).append(f.writer)
    for f in decided:
        put(f)
    conflicts = {p: tuple(dict.fromkeys(w)) for p, w in writers.items() if len(set(w)) > 1}
    return Merged(tuple(by_path[p] for p in sorted(by_path)), conflicts)


def write_tree(files: Iterable[FileOut], root: Path) -> list[Path]:
    """The files under ``root`` (created as needed), atomically each; a path that would
    land outside ``root`` (a link in the tree) is a StateError, never written."""
    written = []
    base = root.resolve()
    for f in files:
        target = root / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not _inside(target.resolve(), base):
            raise StateError(f"{f.path} would be written outside {root} (through a link)")
        write_bytes_atomic(target, f.content.encode("utf-8"))
        written.append(target)
    return written


# -- applying to the workspace ---------------------------------------------------------------


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes] | None:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _git_dirty(root: Path, paths: Sequence[str]) -> set[str] | None:
    """The paths (workspace-relative) git could not restore: modified, staged, untracked
    or ignored; None when ``root`` is not in a git work tree (or git is missing)."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or top.returncode != 0:
        return None
    toplevel = Path(top.stdout.decode().strip()).resolve()
    status = _git(root, "status", "--porcelain", "-z", "--ignored=matching", "--", *paths)
    if status is None or status.returncode != 0:
        return None
    prefix = root.resolve().relative_to(toplevel).as_posix()
    dirty: set[str] = set()
    for entry in status.stdout.decode("utf-8", "replace").split("\0"):
        if len(entry) > 3:
            path = entry[3:].rstrip("/")
            if prefix not in ("", "."):
                path = path.removeprefix(prefix + "/")
            dirty.add(path)
    # a directory entry (untracked or ignored as a whole) covers the paths under it
    return {p for p in paths if p in dirty or any(p.startswith(d + "/") for d in dirty)}


def unified_diff(path: str, old: str | None, new: str) -> str:
    """A unified diff ``git apply -R`` can undo: line endings kept, and a missing final
    newline marked as git marks it."""
    lines = difflib.unified_diff(
        (old or "").splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile="/dev/null" if old is None else f"a/{path}",
        tofile=f"b/{path}",
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


def plan_apply(
    files: Sequence[FileOut], root: Path, forbidden: Sequence[Path], *, force: bool
) -> list[tuple[FileOut, str | None]]:
    """Each file with the workspace's current text (None: a new file), every path checked
    again now (the workspace may have changed since the session); ConfigError (exit 2,
    nothing written) for a path that cannot be written, or one that would overwrite
    uncommitted work or a read-only file and ``force`` is off."""
    current: list[tuple[FileOut, str | None]] = []
    existing: list[str] = []
    readonly: list[str] = []
    for f in files:
        why = refused(f.path, root, forbidden)
        if why is not None:
            raise ConfigError(f"--apply: {why}; nothing was written")
        target = root / f.path
        if target.is_file():
            try:
                current.append((f, target.read_bytes().decode("utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"--apply: cannot read {target}: {exc}") from None
            existing.append(f.path)
            if not target.stat().st_mode & 0o222:  # no write bit (root too: by mode)
                readonly.append(f.path)
        else:
            current.append((f, None))
    if readonly and not force:
        raise ConfigError(
            f"--apply would overwrite read-only file(s) {', '.join(readonly)}; add --force"
        )
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
                f"--apply would overwrite uncommitted or ignored changes in"
                f" {', '.join(changed)} (commit or stash them, or add --force)"
            )
    return current


def _diff_path(session_dir: Path) -> Path:
    """``apply.diff``, or ``apply-<n>.diff`` when an earlier apply recorded one."""
    path = session_dir / "apply.diff"
    n = 1
    while path.exists():
        n += 1
        path = session_dir / f"apply-{n}.diff"
    return path


def apply(
    files: Sequence[FileOut],
    root: Path,
    session_dir: Path,
    *,
    force: bool,
    forbidden: Sequence[Path] = (),
) -> tuple[str, Path]:
    """Write the files into the workspace; the unified diff of the change and where it
    was saved in the session directory (``git apply -R`` undoes it). Every check runs
    before the first write; a write that fails names what was already written."""
    planned = plan_apply(files, root, forbidden, force=force)
    diff = "".join(unified_diff(f.path, old, f.content) for f, old in planned if old != f.content)
    record = _diff_path(session_dir)
    try:
        write_text_atomic(record, diff)
    except OSError as exc:
        raise StateError(f"cannot record {record}: {exc}") from None
    written: list[str] = []
    for f, old in planned:
        if old == f.content:
            continue
        try:
            write_bytes_atomic(root / f.path, f.content.encode("utf-8"))
        except OSError as exc:
            done = ", ".join(written) or "none"
            raise StateError(
                f"--apply stopped at {f.path}: {exc.strerror or exc}; already written: {done}"
                f" (undo those with: git apply -R {record})"
            ) from None
        written.append(f.path)
    return diff, record
