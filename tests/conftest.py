"""Shared fixtures: an isolated environment for every test, fast retries."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from familiar.client.backend import RetryPolicy


async def _no_sleep(_seconds: float) -> None:
    return None


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Strip familiar's env vars and point state (and the host seat ledger) at a tmp dir,
    for every test."""
    for key in list(os.environ):
        if key.startswith("FAMILIAR_") or key.endswith("_API_KEY"):
            monkeypatch.delenv(key, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("FAMILIAR_HOME", str(home))
    monkeypatch.setenv("FAMILIAR_TELEMETRY", "off")
    monkeypatch.setenv("FAMILIAR_LEDGER_DIR", str(tmp_path / "ledger"))
    yield home


@pytest.fixture
def fast_retry() -> RetryPolicy:
    """Retries without backoff sleeps (Retry-After is still honoured via real sleep)."""
    return RetryPolicy(attempts=4, initial_s=0.0, max_s=0.0, cooldown_s=30.0)
