"""Glossaries: term pairs given to the model and checked in its output.

TOML (``[terms]`` table, or top-level ``"source" = "target"`` pairs) or TSV (one
``source<TAB>target`` per line, ``#`` comments).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from familiar.errors import ConfigError


def load_glossary(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read glossary {path}: {exc}") from None
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"glossary {path}: invalid TOML: {exc}") from None
        table = data.get("terms", data)
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in table.items()
        ):
            raise ConfigError(f'glossary {path}: expected "source" = "target" string pairs')
        return dict(table)
    terms: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ConfigError(f"glossary {path}:{n}: expected 'source<TAB>target'")
        terms[parts[0].strip()] = parts[1].strip()
    return terms


def misses(glossary: Mapping[str, str], source: str, output: str) -> list[str]:
    """Terms present in ``source`` whose target is absent from ``output``."""
    low = output.lower()
    return [f"{s} -> {t}" for s, t in glossary.items() if s in source and t.lower() not in low]
