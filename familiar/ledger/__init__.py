"""Fleet-wide seats: every familiar process, on one host or many, shares each cap.

``make_ledger`` picks the ledger from the settings: NATS JetStream when a NATS URL is
set (``FAMILIAR_NATS_URL`` or ``[fleet] nats_url`` in the slots file), else the host
ledger (files with kernel-released locks under ``FAMILIAR_LEDGER_DIR``,
``$XDG_RUNTIME_DIR/familiar`` or the temp dir). There is no silent fallback from one
to the other: a fleet whose NATS ledger is down waits, then fails.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from familiar.errors import LedgerSetupError
from familiar.ledger.base import (
    KINDS,
    DeploymentSeats,
    DeploymentView,
    Holder,
    Kind,
    Lease,
    Ledger,
    deployment_id,
    deployment_label,
    this_process,
)
from familiar.ledger.host import HostLedger, default_dir


class FleetSettings(BaseModel):
    """The ``[fleet]`` table of the slots file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: NATS server(s) holding the ledger, e.g. "nats://10.0.0.5:4222"; unset = host ledger
    nats_url: str | None = None
    #: how long work waits for an unreachable NATS ledger before it fails (seconds)
    ledger_wait_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    #: a held seat's lifetime in NATS without renewal: a crashed host's seats come back
    #: after this long (renewed every third of it while held)
    #: (10 s: a holder paused or cut off for less than 2/3 of it never breaks the cap;
    #: docs/QUEUE.md has the measured table)
    seat_ttl_s: Annotated[float, Field(ge=1, le=600)] = 10.0
    #: a batch over the work queue (``translate --nats``) that gets no result for this
    #: long stops waiting: the articles still out are its failures (exit 1), their jobs
    #: stay queued and a rerun collects them
    collect_timeout_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 3600.0

    @field_validator("nats_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        from urllib.parse import urlsplit

        from familiar.logs import redact_url

        for url in value.split(","):
            shown = redact_url(url.strip())
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"nats_url {shown!r} must be nats://HOST:PORT")
            try:
                parts = urlsplit(url.strip())
                parts.port  # noqa: B018 - raises ValueError for a bad port
            except ValueError as exc:
                raise ValueError(f"nats_url {shown!r}: {exc}") from None
            if not parts.hostname:
                raise ValueError(f"nats_url {shown!r} has no host")
        return value or None

    def resolved(self) -> FleetSettings:
        """With ``FAMILIAR_NATS_URL`` applied (the environment wins over the file)."""
        env = os.environ.get("FAMILIAR_NATS_URL", "").strip()
        if not env:
            return self
        try:
            return self.model_copy(update={"nats_url": FleetSettings._check_url(env)})
        except ValueError as exc:
            raise LedgerSetupError(f"FAMILIAR_NATS_URL: {exc}") from None


def make_ledger(settings: FleetSettings | None = None) -> Ledger:
    """The ledger these settings name (not opened yet)."""
    settings = (settings or FleetSettings()).resolved()
    if settings.nats_url is None:
        return HostLedger()
    try:
        from familiar.ledger.nats import NatsLedger
    except ImportError:
        raise LedgerSetupError(
            "a NATS seat ledger is configured but nats-py is not installed:"
            " pip install 'familiar[fleet]'"
        ) from None
    return NatsLedger(settings.nats_url, wait_s=settings.ledger_wait_s, ttl_s=settings.seat_ttl_s)


__all__ = [
    "KINDS",
    "DeploymentSeats",
    "DeploymentView",
    "FleetSettings",
    "Holder",
    "HostLedger",
    "Kind",
    "Lease",
    "Ledger",
    "default_dir",
    "deployment_id",
    "deployment_label",
    "make_ledger",
    "this_process",
]
