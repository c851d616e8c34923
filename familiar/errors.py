"""The exception tree of familiar.

Two roots: mistakes a user can fix (exit code 2, one clear line, no traceback) and
failures at run time (a backend misbehaving, a session failing)::

    FamiliarError
    ├── ConfigError                 user mistake -> exit code 2
    │   ├── RoleStringError         bad role configuration string (names the token)
    │   ├── SlotsFileError          bad or missing slots file
    │   ├── RoleFileError           bad role file
    │   ├── PromptError             missing prompt file or template variable
    │   ├── LocalSetupError         embedded backend not installed / unusable
    │   └── StateError              familiar's own files unreadable, corrupt or unwritable
    └── RuntimeFailure              failure at run time -> exit code 1
        ├── BackendError(slot)      anything a backend slot did wrong
        │   ├── BackendHTTPError(status, retry_after)
        │   ├── BackendTimeout
        │   ├── BackendConnectError
        │   └── BackendProtocolError  malformed body / stream
        ├── LocalServerError        the embedded llama-server failed to start / died
        ├── ArticleError            one article of a batch cannot be read or written
        ├── AnswerRejected          an answer failed the checks (empty, copied an example)
        └── DispatchError           an item failed (carries the item id)

Retry predicates match these classes, never messages. ``asyncio.CancelledError`` is
never caught and turned into one of these.
"""

from __future__ import annotations


class FamiliarError(Exception):
    """Root of every error familiar raises on purpose."""


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


__all__ = [
    "AnswerRejected",
    "ArticleError",
    "BackendConnectError",
    "BackendError",
    "BackendHTTPError",
    "BackendProtocolError",
    "BackendTimeout",
    "ConfigError",
    "DispatchError",
    "FamiliarError",
    "LocalServerError",
    "LocalSetupError",
    "PromptError",
    "RoleFileError",
    "RoleStringError",
    "RuntimeFailure",
    "SlotsFileError",
    "StateError",
]
