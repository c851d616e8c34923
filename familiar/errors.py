"""The exception tree of familiar: every exception it raises on purpose lives here.

Two roots: mistakes a user can fix (exit code 2, one clear line, no traceback) and
failures at run time (a backend misbehaving, a session failing). Each class carries its
exit code; the CLI prints ``familiar: error: <message>`` and exits with it::

    FamiliarError                   exit_code
    ├── ConfigError                 2   user mistake
    │   ├── RoleStringError         2   bad role configuration string (names the token)
    │   ├── SlotsFileError          2   bad or missing slots file
    │   ├── RoleFileError           2   bad role file
    │   ├── PromptError             2   missing prompt file or template variable
    │   ├── LocalSetupError         2   embedded backend not installed / unusable
    │   ├── LedgerSetupError        2   the seat ledger cannot be used as configured
    │   │                               (nats-py missing, NATS server too old / no JetStream)
    │   ├── QueueSetupError         2   the work queue cannot be used (no JetStream there)
    │   └── StateError              2   familiar's own files unreadable, corrupt or unwritable
    └── RuntimeFailure              1   failure at run time
        ├── BackendError(slot)      1   anything a backend slot did wrong
        │   ├── BackendHTTPError(status, retry_after)
        │   ├── BackendTimeout
        │   ├── BackendConnectError
        │   └── BackendProtocolError  malformed body / stream; no finish_reason; empty
        ├── LocalServerError        1   the embedded llama-server failed to start / died
        ├── LedgerUnavailable       1   the seat ledger (NATS) stayed unreachable past its
        │                               deadline (the message names the URL)
        ├── SeatLost                1   a held seat expired and was taken: request cancelled
        │                               (caught by the client, which asks for a seat again)
        ├── QueueUnavailable        1   the work queue (NATS) stayed unreachable past its
        │                               deadline (the message names the URL)
        ├── ArticleError            1   one article of a batch cannot be read or written
        ├── AnswerRejected          1   an answer failed the checks (empty, copied an example)
        ├── PlanInvalid             1   the planner's answer is not a valid plan
        ├── SessionFailed           1   a session could not finish (its directory keeps the rest)
        ├── DispatchError           1   an item failed (carries the item id)
        ├── BoardClosed             1   work put on a closed work board
        └── TelemetryUnavailable    1   Vector is away or overloaded (retry later)

    KeyboardInterrupt
    └── Terminated                  143 SIGTERM, handled like Ctrl-C (which exits 130)

Foreign exceptions of the LLM client (aiohttp, httpx2, httpx) are mapped in one place,
``client/wire.map_errors``; two callers handle httpx's transport errors where they happen
and never raise them (the telemetry sender retries or spills, ``local.py`` waits for the
embedded server to answer its health endpoint).
Retry predicates match these classes, never messages. ``asyncio.CancelledError`` is
never caught and turned into one of these.
"""

from __future__ import annotations


class FamiliarError(Exception):
    """Root of every error familiar raises on purpose."""

    exit_code = 1


class ConfigError(FamiliarError):
    """A mistake the user can fix: exit code 2, one line, no traceback."""

    exit_code = 2


class RoleStringError(ConfigError):
    """The role configuration string is invalid."""


class SlotsFileError(ConfigError):
    """The slots file is missing or invalid."""


class RoleFileError(ConfigError):
    """A roles/<role>.toml file is missing or invalid."""


class PromptError(ConfigError):
    """A prompt file is missing or a template variable is not provided."""


class LocalSetupError(ConfigError):
    """The embedded backend cannot be used as installed (e.g. extra missing)."""


class StateError(ConfigError):
    """familiar's own state (a session record, CLAUDE.md, the state directory) cannot be
    read or written: the user must repair or remove it. Nothing is changed."""


class LedgerSetupError(ConfigError):
    """The seat ledger cannot be used as configured: nats-py not installed, the NATS
    server too old or without JetStream, a ledger directory that cannot be used."""


class QueueSetupError(ConfigError):
    """The translation work queue cannot be used as asked: the NATS server has no
    JetStream, or its stream or buckets cannot be created."""


class RuntimeFailure(FamiliarError):
    """A failure at run time: exit code 1."""

    exit_code = 1


class BackendError(RuntimeFailure):
    """A backend slot failed a request."""

    def __init__(self, slot: str, message: str, *, replica: str | None = None) -> None:
        self.slot = slot
        self.replica = replica
        super().__init__(f"slot {slot!r}: {message}")


class BackendHTTPError(BackendError):
    """The backend answered with an HTTP error status."""

    def __init__(
        self,
        slot: str,
        status: int,
        message: str = "",
        *,
        retry_after: float | None = None,
        replica: str | None = None,
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        detail = f"HTTP {status}" + (f": {message}" if message else "")
        super().__init__(slot, detail, replica=replica)

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


class BackendTimeout(BackendError):
    """The backend did not answer in time."""


class BackendConnectError(BackendError):
    """The backend could not be reached or dropped the connection."""


class BackendProtocolError(BackendError):
    """The backend answered with something that is not a valid response."""


class LocalServerError(RuntimeFailure):
    """The embedded llama-server failed to start or died."""


class LedgerUnavailable(RuntimeFailure):
    """The seat ledger stayed unreachable past its deadline. familiar never falls back
    to a per-process cap: that would break the fleet's cap."""


class SeatLost(RuntimeFailure):
    """A held seat was found expired and taken (its holder was paused or cut off past the
    seat's TTL): the request on it was cancelled. Caught by the client, which asks the
    ledger for a seat again; never a result."""


class QueueUnavailable(RuntimeFailure):
    """The translation work queue (NATS JetStream) stayed unreachable past its deadline."""


class ArticleError(RuntimeFailure):
    """One article of a translation batch cannot be read or written (that article only)."""


class AnswerRejected(RuntimeFailure):
    """A model's answer failed familiar's checks (empty, or a copy of a prompt's example)
    even after one retry asked differently; it is never kept as a result."""


class DispatchError(RuntimeFailure):
    """A work item failed; carries the item id and the underlying error."""

    def __init__(self, item_id: str, error: BaseException) -> None:
        self.item_id = item_id
        self.error = error
        super().__init__(f"item {item_id!r} failed: {type(error).__name__}: {error}")


class PlanInvalid(RuntimeFailure):
    """The planner's answer is not a valid plan; the message explains why."""


class SessionFailed(RuntimeFailure):
    """A session could not finish; its directory holds what was done."""


class BoardClosed(RuntimeFailure):
    """``put`` on a closed work board."""


class TelemetryUnavailable(RuntimeFailure):
    """Vector is away or overloaded: try again later."""


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM; the work was cancelled and unwound cleanly (exit 143)."""

    exit_code = 143


__all__ = [
    "AnswerRejected",
    "ArticleError",
    "BackendConnectError",
    "BackendError",
    "BackendHTTPError",
    "BackendProtocolError",
    "BackendTimeout",
    "BoardClosed",
    "ConfigError",
    "DispatchError",
    "FamiliarError",
    "LedgerSetupError",
    "LedgerUnavailable",
    "LocalServerError",
    "LocalSetupError",
    "PlanInvalid",
    "PromptError",
    "QueueSetupError",
    "QueueUnavailable",
    "RoleFileError",
    "RoleStringError",
    "RuntimeFailure",
    "SessionFailed",
    "SlotsFileError",
    "StateError",
    "TelemetryUnavailable",
    "Terminated",
]
