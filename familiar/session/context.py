"""The workspace files a session is given: found, filtered, measured, bounded.

``familiar run --context PATH...`` names files, directories and globs. A directory is
walked honouring ``.gitignore`` files (git's own matching rules, from :mod:`pathspec`),
skipping hidden entries and familiar's own state; a file that looks like a secret
(``.env``, ``*.pem``, ``*.key``, ``id_*``...) is left out unless named alone; binary and
non-UTF-8 files, and anything that is not a regular file, are skipped. Files are taken
in the order given until the token budget is full; a file that does not fit is left out
whole (``cut``), never shown in part: a worker that rewrites a file it saw half of would
truncate it.

The result is a :class:`Context`: each file with its path, bytes, tokens, content hash
and status, recorded in the session as ``context.json`` and summarised in one line.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pathspec

from familiar.errors import ConfigError
from familiar.translate.markdown.model import estimate_tokens

Status = Literal["included", "cut", "skipped"]
_Spec = pathspec.PathSpec[Any]

#: names that hold credentials more often than not: never taken from a directory or glob
SECRET_PATTERNS = (
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_*",
    "*.creds",
    "*.nk",
    ".netrc",
    ".pgpass",
    "credentials*",
    "secrets*",
    "*.tfvars",
    "*.tfstate",
    "*service-account*.json",
    "*.keystore",
    "*.jks",
    ".npmrc",
    ".pypirc",
    "kubeconfig*",
    "*.ovpn",
)
_GLOB_CHARS = frozenset("*?[")
_HEAD_LINES = 3
_SNIFF = 8192
#: a file larger than this is never read whole into a prompt
MAX_FILE_BYTES = 2 * 1024 * 1024


def looks_secret(name: str) -> bool:
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, p) for p in SECRET_PATTERNS)


@dataclass(frozen=True)
class ContextFile:
    """One file considered for the context; ``text`` is kept only when included."""

    path: str  # relative to the workspace, '/'-separated
    bytes: int
    tokens: int
    sha256: str
    status: Status
    reason: str = ""
    text: str = field(default="", repr=False)

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "bytes": self.bytes,
            "tokens": self.tokens,
            "sha256": self.sha256,
            "status": self.status,
        }
        if self.reason:
            out["reason"] = self.reason
        return out

    def head(self, lines: int = _HEAD_LINES) -> str:
        return "\n".join(self.text.splitlines()[:lines])


@dataclass(frozen=True)
class Context:
    """The files of a session's context and the budget they were chosen under."""

    files: tuple[ContextFile, ...] = ()
    budget: int = 0
    budget_source: str = ""

    @property
    def included(self) -> tuple[ContextFile, ...]:
        return tuple(f for f in self.files if f.status == "included")

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(f.path for f in self.included)

    def file(self, path: str) -> ContextFile:
        for f in self.included:
            if f.path == path:
                return f
        raise KeyError(path)

    def __bool__(self) -> bool:
        return bool(self.files)

    def joined(self, other: Context) -> Context:
        """This context and ``other``'s files not already in it (in order)."""
        have = {f.path for f in self.files}
        extra = tuple(f for f in other.files if f.path not in have)
        return Context(self.files + extra, self.budget, self.budget_source)

    def within(self, budget: int, source: str) -> Context:
        """The same files chosen again under ``budget``: in order, while they fit (a file
        already cut or skipped stays so)."""
        files: list[ContextFile] = []
        used = 0
        for f in self.files:
            if f.status == "included" and used + f.tokens > budget:
                reason = f"over the budget ({f.tokens:,} tokens, {budget - used:,} left)"
                files.append(ContextFile(f.path, f.bytes, f.tokens, f.sha256, "cut", reason))
                continue
            used += f.tokens if f.status == "included" else 0
            files.append(f)
        return Context(tuple(files), budget, source)

    def summary(self) -> str:
        """One line: what was included, cut and skipped (with the reasons)."""
        inc = self.included
        tokens = sum(f.tokens for f in inc)
        line = (
            f"context: {len(inc)} file(s), {sum(f.bytes for f in inc):,} bytes,"
            f" ~{tokens:,} of {self.budget:,} tokens ({self.budget_source})"
        )
        for status in ("cut", "skipped"):
            left = [f for f in self.files if f.status == status]
            if left:
                shown = "; ".join(f"{f.path} ({f.reason})" for f in left)
                line += f"; {status} {len(left)}: {shown}"
        return line

    def record(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "budget_source": self.budget_source,
            "files": [f.record() for f in self.files],
        }


# -- finding files -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    path: Path
    named: bool  # named one by one (not from a directory or glob)


def _inside(path: Path, root: Path) -> bool:
    return path.is_relative_to(root)


def _ignore_spec(directory: Path) -> _Spec | None:
    gitignore = directory / ".gitignore"
    try:
        lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _ignored(rel: str, is_dir: bool, specs: Sequence[tuple[str, _Spec]]) -> bool:
    """Whether git ignores ``rel`` (relative to the workspace): the last pattern that
    matches decides, deeper ``.gitignore`` files after shallower ones, so a negation
    (``!keep.log``) brings a file back (``specs``: base directory, its spec, in order)."""
    ignored = False
    for base, spec in specs:
        if base and not rel.startswith(base + "/"):
            continue
        sub = rel[len(base) + 1 :] if base else rel
        result = spec.check_file(sub + ("/" if is_dir else ""))
        if result.include is not None:
            ignored = result.include
    return ignored


def _exclude_spec(root: Path) -> _Spec | None:
    """``.git/info/exclude``: the repository's own ignore list (before any .gitignore)."""
    try:
        lines = (root / ".git" / "info" / "exclude").read_text(errors="replace").splitlines()
    except OSError:
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _walk(root: Path, start: Path, skip: Sequence[Path]) -> Iterator[Path]:
    """Regular files under ``start`` (sorted), honouring every .gitignore from the
    workspace root down; hidden entries and ``skip`` directories left out."""

    def base(directory: Path) -> str:
        return "" if directory == root else directory.relative_to(root).as_posix()

    specs: list[tuple[str, _Spec]] = []
    exclude = _exclude_spec(root)
    if exclude is not None:
        specs.append(("", exclude))
    above = root
    for part in start.relative_to(root).parts:  # the .gitignore files above ``start``
        spec = _ignore_spec(above)
        if spec is not None:
            specs.append((base(above), spec))
        above = above / part

    def walk(directory: Path, specs: list[tuple[str, _Spec]]) -> Iterator[Path]:
        own = _ignore_spec(directory)
        if own is not None:
            specs = [*specs, (base(directory), own)]
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix()
            is_dir = entry.is_dir(follow_symlinks=False)
            if _ignored(rel, is_dir, specs):
                continue
            if is_dir:
                if any(path == s for s in skip):
                    continue
                yield from walk(path, specs)
            else:
                yield path

    yield from walk(start, specs)


def _expand(root: Path, specs: Iterable[str], cwd: Path, skip: Sequence[Path]) -> list[_Found]:
    found: list[_Found] = []
    for spec in specs:
        if not spec.strip():
            raise ConfigError("--context got an empty path")
        if _GLOB_CHARS & set(spec):
            pattern = spec if os.path.isabs(spec) else str(cwd / spec)
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise ConfigError(f"--context {spec!r} matches no file")
            for m in matches:
                p = Path(m)
                if not _inside(Path(os.path.abspath(p)), root):
                    raise ConfigError(
                        f"--context {spec!r} matches {m}, outside the workspace {root}"
                    )
                if p.is_dir() and not p.is_symlink():
                    found.extend(_Found(f, False) for f in _walk(root, p.resolve(), skip))
                elif not any(part.startswith(".") for part in Path(m).parts[-1:]):
                    found.append(_Found(p, False))
            continue
        path = Path(spec).expanduser()
        path = path if path.is_absolute() else cwd / path
        if not os.path.lexists(path):
            raise ConfigError(f"--context {spec}: no such file or directory")
        absolute = Path(os.path.abspath(path))
        if not _inside(absolute, root):
            raise ConfigError(f"--context {spec} is outside the workspace {root}")
        if any(part == ".git" for part in absolute.relative_to(root).parts):
            raise ConfigError(f"--context {spec}: .git/ is never sent to a model")
        if path.is_dir() and not path.is_symlink():
            found.extend(_Found(f, False) for f in _walk(root, path.resolve(), skip))
        else:
            found.append(_Found(path, True))
    return found


def _read(root: Path, item: _Found) -> tuple[str, bytes | None, str]:
    """The file's workspace-relative path, its bytes (None: skipped) and why not."""
    absolute = Path(os.path.abspath(item.path))
    rel = absolute.relative_to(root).as_posix() if _inside(absolute, root) else str(item.path)
    try:
        real = absolute.resolve(strict=True)
    except (OSError, RuntimeError):
        return rel, None, "cannot be resolved (a broken or looping link)"
    if not _inside(real, root):
        return rel, None, "a link that leaves the workspace"
    if any(part == ".git" for part in real.relative_to(root).parts):
        return rel, None, "inside .git/"
    if not item.named and (looks_secret(absolute.name) or looks_secret(real.name)):
        return rel, None, "looks like a secret (name it alone to include it)"
    try:
        st = os.stat(real)
    except OSError as exc:
        return rel, None, f"unreadable: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return rel, None, "not a regular file"
    if st.st_size > MAX_FILE_BYTES:
        return rel, None, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MB"
    try:
        data = real.read_bytes()
    except OSError as exc:
        return rel, None, f"unreadable: {exc.strerror or exc}"
    if b"\0" in data[:_SNIFF]:
        return rel, None, "binary"
    return rel, data, ""


def gather(
    root: Path,
    specs: Sequence[str],
    budget: int,
    *,
    budget_source: str = "--context-tokens",
    cwd: Path | None = None,
    skip: Sequence[Path] = (),
) -> Context:
    """The context named by ``specs`` (paths, directories, globs; relative to ``cwd``),
    within ``budget`` tokens. ConfigError (exit 2) for a path that does not exist or lies
    outside the workspace ``root``."""
    root = root.resolve()
    cwd = (cwd or Path.cwd()).resolve()
    files: list[ContextFile] = []
    seen: set[str] = set()
    used = 0
    for item in _expand(root, specs, cwd, [s.resolve() for s in skip]):
        rel, data, why = _read(root, item)
        if rel in seen:
            continue
        seen.add(rel)
        if data is None:
            files.append(ContextFile(rel, 0, 0, "", "skipped", why))
            continue
        digest = hashlib.sha256(data).hexdigest()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            files.append(ContextFile(rel, len(data), 0, digest, "skipped", "not UTF-8"))
            continue
        tokens = estimate_tokens(text)
        if used + tokens > budget:
            reason = f"over the budget ({tokens:,} tokens, {budget - used:,} left)"
            files.append(ContextFile(rel, len(data), tokens, digest, "cut", reason))
            continue
        used += tokens
        files.append(ContextFile(rel, len(data), tokens, digest, "included", text=text))
    return Context(tuple(files), budget, budget_source)


def reread(root: Path, recorded: dict[str, Any]) -> tuple[Context, list[str]]:
    """A recorded context read again for a resume: the same files, by path; a file whose
    content changed is re-read (its new hash recorded) and named in the warnings."""
    warnings: list[str] = []
    files: list[ContextFile] = []
    for entry in recorded.get("files", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            continue
        if entry.get("status") != "included":
            files.append(
                ContextFile(
                    entry["path"],
                    int(entry.get("bytes") or 0),
                    int(entry.get("tokens") or 0),
                    str(entry.get("sha256") or ""),
                    "cut" if entry.get("status") == "cut" else "skipped",
                    str(entry.get("reason") or ""),
                )
            )
            continue
        rel, data, why = _read(root, _Found(root / entry["path"], True))
        if data is None:
            warnings.append(f"context file {rel} changed: {why}; left out")
            files.append(ContextFile(rel, 0, 0, "", "skipped", why))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.get("sha256"):
            warnings.append(f"context file {rel} changed since the session started; re-read")
        text = data.decode("utf-8", errors="replace")
        files.append(
            ContextFile(rel, len(data), estimate_tokens(text), digest, "included", text=text)
        )
    budget = recorded.get("budget")
    source = recorded.get("budget_source")
    return (
        Context(
            tuple(files),
            budget if isinstance(budget, int) else 0,
            source if isinstance(source, str) else "",
        ),
        warnings,
    )


def task_front_matter(text: str) -> tuple[list[str], str]:
    """A task file's ``context:`` list (front matter between ``---`` lines: ``context:``
    followed by ``- path`` lines, or ``context: [a, b]``) and the task without it.
    A task without front matter is returned as it is."""
    if not text.startswith("---\n"):
        return [], text
    end = text.find("\n---\n", 3)
    if end < 0:
        return [], text
    head, body = text[4:end], text[end + 5 :]
    paths: list[str] = []
    in_list = False
    for raw in head.splitlines():
        line = raw.strip()
        if line.startswith("context:"):
            rest = line[len("context:") :].strip()
            if rest.startswith("[") and rest.endswith("]"):
                paths.extend(p.strip().strip("\"'") for p in rest[1:-1].split(",") if p.strip())
                in_list = False
            elif rest:
                paths.append(rest.strip("\"'"))
            else:
                in_list = True
        elif in_list and line.startswith("- "):
            paths.append(line[2:].strip().strip("\"'"))
        elif line:
            in_list = False
    return paths, body.lstrip("\n")
