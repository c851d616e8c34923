"""familiar: an asyncio orchestrator for self-hosted LLM fleets."""

from familiar.backend import CallEvent, CallResult, RetryPolicy, SlotClient
from familiar.config import Config, load_config
from familiar.dispatch import Dispatcher, ItemResult, Pool, WorkItem, run_all
from familiar.errors import ConfigError, FamiliarError, RuntimeFailure
from familiar.fleet import Fleet
from familiar.roles import PRESETS, RoleConfig, parse_role_string
from familiar.seats import Seats
from familiar.slots import Slot, load_slots

__version__ = "0.1.0"

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
