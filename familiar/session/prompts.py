"""Prompts: one file each under prompts/, rendered with ``{name}`` fields.

A workspace's ``prompts/<file>`` overrides the shipped one. Every prompt has a
version: the first 12 hex digits of the SHA-256 of its text, recorded by sessions and
caches so that a changed prompt is never confused with the old one. Rendering with a
missing variable is an error, never a silent blank.

Example blocks sit between ``<!-- example -->`` and ``<!-- /example -->`` lines: the
markers are removed when a prompt is rendered, and :attr:`Prompt.examples` gives the
answer-like snippets of those blocks, so that an answer that copies one is caught
(:mod:`familiar.copycheck`).
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

from familiar import copycheck
from familiar.config.workspace import overlay_path
from familiar.errors import PromptError


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    path: Path

    @property
    def version(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:12]

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(f for _, f, _, _ in string.Formatter().parse(self.text) if f)

    @property
    def examples(self) -> list[str]:
        """The answer-like snippets of the prompt's example blocks (empty if none)."""
        return copycheck.examples(self.text)

    def render(self, **values: object) -> str:
        missing = self.fields - values.keys()
        if missing:
            raise PromptError(
                f"prompt {self.name!r} needs {', '.join(sorted(missing))} ({self.path})"
            )
        return copycheck.without_markers(self.text).format(**values)


def load_prompt(workspace: Path, name: str) -> Prompt:
    path = overlay_path(workspace, "prompts", name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptError(f"cannot read prompt {path}: {exc}") from None
    try:
        list(string.Formatter().parse(text))
    except ValueError as exc:
        hint = "write literal braces as {{ and }}"
        raise PromptError(f"{path}: bad template ({exc}); {hint}") from None
    return Prompt(name=name, text=text, path=path)
