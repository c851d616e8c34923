"""familiar: an asyncio orchestrator for self-hosted LLM fleets.

The public names below are imported on first use (PEP 562 module ``__getattr__``), so
``import familiar`` -- and with it ``familiar --version`` and ``familiar --help`` -- does not
pay for the HTTP stack (aiohttp, httpx2) or pydantic. ``from familiar import SlotClient`` works
as before; type checkers see ordinary imports.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: The one place the version is written: pyproject.toml reads it
#: (``[tool.setuptools.dynamic] version = {attr = "familiar.__version__"}``).
__version__ = "0.1.0"

#: public name -> the module that defines it
_LAZY: dict[str, str] = {
    "PRESETS": "familiar.config.roles",
    "CallEvent": "familiar.client.backend",
    "CallResult": "familiar.client.backend",
    "Config": "familiar.config.workspace",
    "ConfigError": "familiar.errors",
    "Dispatcher": "familiar.dispatch",
    "FamiliarError": "familiar.errors",
    "Fleet": "familiar.fleet",
    "ItemResult": "familiar.dispatch",
    "Pool": "familiar.dispatch",
    "RetryPolicy": "familiar.client.backend",
    "RoleConfig": "familiar.config.roles",
    "RuntimeFailure": "familiar.errors",
    "Seats": "familiar.seats",
    "Slot": "familiar.config.slots",
    "SlotClient": "familiar.client.backend",
    "WorkItem": "familiar.dispatch",
    "load_config": "familiar.config.workspace",
    "load_slots": "familiar.config.slots",
    "parse_role_string": "familiar.config.roles",
    "run_all": "familiar.dispatch",
}

if TYPE_CHECKING:
    from familiar.client.backend import CallEvent, CallResult, RetryPolicy, SlotClient
    from familiar.config.roles import PRESETS, RoleConfig, parse_role_string
    from familiar.config.slots import Slot, load_slots
    from familiar.config.workspace import Config, load_config
    from familiar.dispatch import Dispatcher, ItemResult, Pool, WorkItem, run_all
    from familiar.errors import ConfigError, FamiliarError, RuntimeFailure
    from familiar.fleet import Fleet
    from familiar.seats import Seats

__all__ = [
    "PRESETS",
    "CallEvent",
    "CallResult",
    "Config",
    "ConfigError",
    "Dispatcher",
    "FamiliarError",
    "Fleet",
    "ItemResult",
    "Pool",
    "RetryPolicy",
    "RoleConfig",
    "RuntimeFailure",
    "Seats",
    "Slot",
    "SlotClient",
    "WorkItem",
    "__version__",
    "load_config",
    "load_slots",
    "parse_role_string",
    "run_all",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'familiar' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
