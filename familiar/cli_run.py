"""Commands that run work: filled in by the sessions and translation modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_run_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``run``, ``sessions``, ``translate``, ``telemetry`` when they exist."""
