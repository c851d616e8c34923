"""The wheel ships every package of familiar/ (setuptools lists them by hand)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_under_familiar_is_listed_in_pyproject() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "familiar").rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)


def test_no_benchmark_shadows_a_standard_library_module() -> None:
    """Scripts run as ``python benchmarks/x.py`` put benchmarks/ first on sys.path: a
    ``queue.py`` there broke every benchmark (anyio imports the standard ``queue``)."""
    import sys

    names = {p.stem for p in (REPO / "benchmarks").glob("*.py")}
    assert not names & set(sys.stdlib_module_names)
