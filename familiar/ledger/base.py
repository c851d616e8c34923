"""The ledger interface: where a deployment's seats are held for every familiar process.

A *ledger* holds the seats of deployments so that every familiar process sharing it
shares each deployment's cap (``parallel``): the host ledger (files with
kernel-released locks, default) for the processes of one host, the NATS JetStream
ledger for many hosts. ``Seats`` (seats.py) is each process's one queue in front of
it; a ledger keeps no queue of its own.

A deployment's seats are numbered ``0 .. cap-1``. Batch work (translation batches)
may take only seats ``0 .. cap-reserve-1``; interactive work (sessions) may take any,
so ``reserve`` seats stay free for a session started while a batch runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

from familiar.seats import KINDS, Held, Kind, Lease, Seats

__all__ = [
    "KINDS",
    "DeploymentSeats",
    "DeploymentView",
    "Holder",
    "Kind",
    "Lease",
    "Ledger",
    "deployment_id",
    "deployment_label",
    "this_process",
    "wait_event",
]


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; False on timeout. Unlike
    ``asyncio.wait_for`` on Python 3.11, a cancellation arriving as the event fires is
    never swallowed (a loop around it would otherwise run on, "cancelling", forever)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


def deployment_id(urls: Sequence[str], model: str) -> str:
    """A stable, filename- and NATS-key-safe name for a deployment (URLs without
    userinfo + model); the same on every host that names the deployment the same way."""
    from familiar.logs import redact_url

    text = json.dumps([sorted(redact_url(u) for u in urls), model])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def deployment_label(urls: Sequence[str], model: str) -> str:
    from familiar.logs import redact_url

    return f"{model} @ {', '.join(redact_url(u) for u in urls)}"


@dataclass(frozen=True)
class Holder:
    """Who holds (or waits for) a seat: shown by ``familiar fleet``."""

    host: str
    pid: int
    command: str
    kind: Kind = "interactive"
    since: float = 0.0  # wall clock (epoch seconds) when the seat was taken

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Holder | None:
        """``None`` for anything that is not a holder record (torn, foreign). The command
        is masked again: a record another (older) process wrote may carry a secret."""
        from familiar.logs import mask

        try:
            obj = json.loads(data)
            return cls(
                host=str(obj["host"]),
                pid=int(obj["pid"]),
                command=mask(str(obj["command"])),
                kind="batch" if obj.get("kind") == "batch" else "interactive",
                since=float(obj.get("since", 0.0)),
            )
        except (ValueError, TypeError, KeyError, OverflowError):
            return None


def this_process(kind: Kind = "interactive") -> Holder:
    """This process as a holder: host, pid, and its command line (masked, shortened)."""
    from familiar.logs import mask

    argv = [os.path.basename(sys.argv[0]) or "python", *sys.argv[1:]] if sys.argv else []
    command = mask(" ".join(argv))
    if len(command) > 120:
        command = command[:117] + "..."
    return Holder(socket.gethostname(), os.getpid(), command, kind, time.time())


@dataclass(frozen=True)
class DeploymentView:
    """One deployment as a ledger sees it right now (``familiar fleet``)."""

    id: str
    label: str
    cap: int
    reserve: int
    holders: dict[int, Holder] = field(default_factory=dict)  # seat -> holder
    waiting: list[Holder] = field(default_factory=list)  # processes waiting, any order
    #: the caps (``parallel``) the live processes of this deployment use, one per process;
    #: empty when the ledger does not know them
    live_caps: list[int] = field(default_factory=list)

    @property
    def in_use(self) -> int:
        return len(self.holders)

    @property
    def effective_cap(self) -> int:
        """The cap that applies: the strictest live one (else the last one written)."""
        return min(self.live_caps) if self.live_caps else self.cap

    @property
    def disagree(self) -> bool:
        """Whether live processes use different caps for this deployment."""
        return len(set(self.live_caps)) > 1

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.id,
            "label": self.label,
            "cap": self.effective_cap,
            "live_caps": sorted(self.live_caps),
            "caps_disagree": self.disagree,
            "reserve": self.reserve,
            "in_use": self.in_use,
            "holders": [{"seat": seat, **asdict(h)} for seat, h in sorted(self.holders.items())],
            "waiting": len(self.waiting),
            "waiters": [asdict(h) for h in self.waiting],
        }


class DeploymentSeats(ABC):
    """One deployment's seats in a ledger, as one process uses them: a source of seats
    for this process's one queue (``familiar.seats.Seats``). It keeps no queue of its
    own: it takes a seat when the seat policy gives this process one, and hands it to
    the queue's first acquirer that may use it (``Seats.grant``)."""

    def __init__(self, dep_id: str, label: str, cap: int, reserve: int) -> None:
        if cap < 1:
            raise ValueError("a deployment needs at least one seat")
        if not 0 <= reserve < cap:
            raise ValueError(f"reserve must be 0 .. {cap - 1} for {cap} seats, not {reserve}")
        self.id = dep_id
        self.label = label
        self.cap = cap
        self.reserve = reserve
        #: this process's queue for the deployment, once one is attached
        self.attached: Seats | None = None

    def usable(self, kind: Kind) -> int:
        """How many seats (``0 .. n-1``) work of this kind may take."""
        return self.cap - self.reserve if kind == "batch" else self.cap

    @property
    def queue(self) -> Seats:
        """This process's one queue for the deployment (made on first use)."""
        if self.attached is None:
            Seats(self.cap, ledger=self)
        assert self.attached is not None
        return self.attached

    def attach(self, queue: Seats) -> None:
        if self.attached is not None and self.attached is not queue:
            raise ValueError(
                f"the seats of {self.label} have their queue in this process already"
                " (use its .queue)"
            )
        self.attached = queue

    async def acquire(self, kind: Kind) -> Lease:
        """Wait for a seat (cancellable; nothing is held when cancelled)."""
        held = await self.queue.acquire(kind)
        assert held.lease is not None
        return held.lease

    async def release(self, lease: Lease) -> None:
        """Give a seat back (never raises; safe in ``finally`` of a cancelled task)."""
        await self.queue.release(Held(lease, 0.0, 0.0))

    def try_take(self, kind: Kind) -> Lease | None:
        """A seat at once when nobody of this process waits and the policy allows
        (``None``: the acquirer queues, and :meth:`wanted` is called)."""
        return None

    @abstractmethod
    def wanted(self) -> None:
        """The queue changed (an acquirer came or left): look again."""

    @abstractmethod
    async def put_back(self, lease: Lease) -> None:
        """A seat this process no longer uses (never raises)."""

    def lost(self, lease: Lease) -> asyncio.Future[None] | None:
        """A future resolved when ``lease`` is found lost (expired and taken by another
        holder); ``None`` when this ledger cannot lose a seat (the host ledger's locks)."""
        return None


class Ledger(ABC):
    """Where seats are held. ``async with ledger:`` opens and closes it."""

    #: "host" or "nats"
    kind: str = ""
    #: where it lives, for messages (a directory, a URL without userinfo)
    where: str = ""

    async def __aenter__(self) -> Ledger:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect / create what the ledger needs; raises ``LedgerError`` subclasses."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Give back everything still held; never raises."""

    @abstractmethod
    def deployment(self, dep_id: str, label: str, cap: int, reserve: int = 0) -> DeploymentSeats:
        """The seats of one deployment (the same object for the same ``dep_id``)."""

    @abstractmethod
    async def views(self) -> list[DeploymentView]:
        """Every deployment the ledger knows, with its holders and waiters."""
