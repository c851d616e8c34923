"""The host ledger: every familiar process of the user on this host shares each cap.

Zero setup. A directory (``$FAMILIAR_LEDGER_DIR``, else ``$XDG_RUNTIME_DIR/familiar``,
else ``~/.local/state/familiar/ledger-<host>``, else ``<tmp>/familiar-<uid>``; a
directory another user made is passed over, see ``host_files.default_dir``) holds one
subdirectory per deployment::

    <dep_id>/seats      lock file: byte i locked = seat i held; waiter tickets far above
    <dep_id>/holders    512-byte record per seat: who took it (host, pid, command, kind)
    <dep_id>/meta.json  label, cap, reserve (for ``familiar fleet``)
    <dep_id>/waiters/   one marker per waiting process (locked while it waits)

Seats are Linux open-file-description byte-range locks (``FOFD_SETLK``), taken without
blocking. The kernel drops a process's locks when it exits, however it exits (SIGKILL
too), so a dead process never keeps a seat; its stale holder record is ignored because
the lock, not the record, is the truth.

Waiting is fair and wakes on release, without polling a server:

* a waiting process holds a *ticket* lock at ``base[kind] + monotonic_ns`` (one per kind
  it waits for); it may take a free seat only when no other process holds an older ticket
  of its kind (batch work also yields to any waiting interactive work). After a grant it
  queues again with a new ticket, so contending processes take turns (round robin), and
  within a process the one queue (``familiar.seats.Seats``) serves sessions first, then
  first come;
* whoever frees a seat or passes its turn rings the waiting processes' doorbells (an
  abstract Unix datagram socket named in the marker file); a seat freed by a process
  that died rings no bell, so waiters also re-check every ``safety_s`` (0.5 s).

The host ledger needs Linux (OFD locks); elsewhere use the NATS ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from pathlib import Path

from familiar.errors import LedgerSetupError
from familiar.ledger.base import (
    DeploymentSeats,
    DeploymentView,
    Holder,
    Kind,
    Lease,
    Ledger,
    this_process,
)
from familiar.ledger.host_caps import HostCaps, write_meta
from familiar.ledger.host_files import (
    RECORD,
    TICKETS,
    default_dir,
    free_seats,
    live_waiters,
    read_view,
    ticket,
    ticket_queue,
)
from familiar.ledger.host_locks import (
    OFD_GETLK,
    OFD_SETLK,
    first_lock,
    locks,
    try_lock,
    unlock,
)
from familiar.ledger.policy import Waiter, choose

_BELL = "\0familiar-ledger-"


# -- the ledger ---------------------------------------------------------------------------


class HostLedger(Ledger):
    """Seats shared by every familiar process of this user on this host."""

    kind = "host"

    def __init__(
        self,
        directory: Path | None = None,
        *,
        holder: Holder | None = None,
        safety_s: float = 0.5,
    ) -> None:
        self.dir = directory if directory is not None else default_dir()
        self.where = str(self.dir)
        self.holder = holder or this_process()
        self.safety_s = safety_s
        self.token = secrets.token_hex(8)
        self._deployments: dict[str, HostSeats] = {}
        self._bell: socket.socket | None = None
        self._ringer: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened = False

    async def open(self) -> None:
        self._check()
        self._loop = asyncio.get_running_loop()
        self._opened = True

    def _check(self) -> None:
        if OFD_SETLK is None or OFD_GETLK is None:
            raise LedgerSetupError(
                "the host seat ledger needs Linux (open file description locks); on this"
                " system set FAMILIAR_NATS_URL to use a NATS ledger"
            )
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.dir.stat()
        except FileExistsError:
            raise LedgerSetupError(
                f"seat ledger directory {self.dir} is not a directory; set FAMILIAR_LEDGER_DIR"
                " to a directory of your own"
            ) from None
        except OSError as exc:
            raise LedgerSetupError(f"seat ledger directory {self.dir}: {exc.strerror}") from None
        if st.st_uid != os.getuid():
            raise LedgerSetupError(
                f"seat ledger directory {self.dir} belongs to another user; set"
                " FAMILIAR_LEDGER_DIR to a directory of your own"
            )

    async def close(self) -> None:
        for dep in self._deployments.values():
            dep.close()
        self._deployments.clear()
        if self._bell is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._bell.fileno())
            self._bell.close()
            self._bell = None
        if self._ringer is not None:
            self._ringer.close()
            self._ringer = None

    def deployment(self, dep_id: str, label: str, cap: int, reserve: int = 0) -> HostSeats:
        dep = self._deployments.get(dep_id)
        if dep is None:
            if not self._opened:
                self._check()
            dep = self._deployments[dep_id] = HostSeats(self, dep_id, label, cap, reserve)
        return dep

    # -- doorbells ---------------------------------------------------------------------

    def listen(self) -> None:
        """Bind this process's doorbell (once, when it first has to wait)."""
        if self._bell is not None:
            return
        bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bell.setblocking(False)
        bell.bind(_BELL + self.token)
        self._bell = bell
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        loop.add_reader(bell.fileno(), self._on_bell)

    def _on_bell(self) -> None:
        assert self._bell is not None
        with contextlib.suppress(OSError):
            while self._bell.recv(64):
                pass
        for dep in list(self._deployments.values()):
            dep.pump()

    def ring(self, token: str) -> bool:
        """Wake the process waiting behind ``token``; False when nobody listens there."""
        if self._ringer is None:
            self._ringer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._ringer.setblocking(False)
        try:
            self._ringer.sendto(b"!", _BELL + token)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:  # its buffer is full: it has bells to read already
            return True
        return True

    # -- familiar fleet ----------------------------------------------------------------

    async def views(self) -> list[DeploymentView]:
        return await asyncio.to_thread(self._views)

    def _views(self) -> list[DeploymentView]:
        if not self.dir.is_dir():
            return []
        out = []
        for sub in sorted(self.dir.iterdir()):
            view = read_view(sub, token=self.token)
            if view is not None:
                out.append(view)
        return out


class HostSeats(DeploymentSeats):
    """One deployment's seats in the host ledger, as this process uses them."""

    def __init__(self, ledger: HostLedger, dep_id: str, label: str, cap: int, reserve: int) -> None:
        super().__init__(dep_id, label, cap, reserve)
        self._ledger = ledger
        self._dir = ledger.dir / dep_id
        try:
            (self._dir / "waiters").mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self._dir / "seats", flags, 0o600)
            self._records = os.open(self._dir / "holders", flags, 0o600)
        except OSError as exc:
            raise LedgerSetupError(f"seat ledger {self._dir}: {exc.strerror}") from None
        write_meta(self._dir, label, cap, reserve)
        self._held: set[int] = set()
        self._tickets: dict[Kind, int] = {}
        self._marker: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._idle_since: float | None = None  # a seat seen free while others were ahead
        self._caps = HostCaps(self._dir, ledger.token, cap, label)

    @property
    def held(self) -> int:
        """Seats this process holds right now."""
        return len(self._held)

    # -- what the queue uses (``familiar.seats.Seats``) --------------------------------

    def try_take(self, kind: Kind) -> Lease | None:
        if self._closed:
            raise RuntimeError("the seat ledger is closed")
        seat = self._take(kind)
        return None if seat is None else Lease(seat)

    def wanted(self) -> None:
        if self._closed:
            if self.attached is not None:
                self.attached.fail_all(RuntimeError("the seat ledger is closed"))
            return
        self.pump()

    async def put_back(self, lease: Lease) -> None:
        self._give_back(lease.seat)

    def _give_back(self, seat: int) -> None:
        if seat not in self._held or self._closed:
            return
        self._held.discard(seat)
        with contextlib.suppress(OSError):
            unlock(self._fd, seat)
        if not self.pump():
            self._ring_others()

    def _take(self, kind: Kind) -> int | None:
        """A free seat for ``kind`` if the policy gives this process one now, else None
        (``policy.choose``: ticket order, sessions first, reserve, the strictest live cap,
        patience with a waiter ahead that leaves a seat free)."""
        for _ in range(self.cap + 1):  # a seat taken between the look and the lock: again
            turn = choose(
                self.cap,
                self.reserve,
                self._free(),
                self._queue(kind),
                kind,
                live_caps=self._caps.others(),
                idle_since=self._idle_since,
                now=time.monotonic(),
            )
            self._idle_since = turn.idle_since
            seat = turn.seat
            if seat is None:
                return None
            if seat in self._held or not try_lock(self._fd, seat):
                continue
            self._held.add(seat)
            record = self._ledger.holder
            data = Holder(record.host, record.pid, record.command, kind, time.time()).to_json()
            with contextlib.suppress(OSError):
                os.pwrite(
                    self._records, data.ljust(RECORD - 1)[: RECORD - 1] + b"\n", seat * RECORD
                )
            return seat
        return None

    def _free(self) -> list[int]:
        """The seats no process holds (other processes' locks, and this one's)."""
        return free_seats(self.cap, set(locks(self._fd, 0, self.cap)) | self._held)

    def _queue(self, kind: Kind) -> list[Waiter]:
        """The waiting processes in ticket order: the others' tickets (locks this open
        file does not hold) and this process's ticket for ``kind``, if it has one."""
        return ticket_queue(locks(self._fd, *TICKETS), self._tickets.get(kind), kind)

    # -- waiting -------------------------------------------------------------------------

    def pump(self) -> bool:
        """Grant seats to this process's waiters in order while it is their turn.
        Returns True when it rang the other waiting processes."""
        if self._closed:
            return False
        granted = self._grant()
        if self._sync_waiting():
            # newly in the queue: a seat freed between the try and the ticket rang nobody
            # (its holder saw no ticket), so try once more now that releases will ring us
            granted = self._grant() or granted
            self._sync_waiting()
        if granted:
            self._ring_others()
        return granted

    def _grant(self) -> bool:
        """Seats for the queue's acquirers while the policy gives them (sessions first,
        this process's own too, else first come)."""
        queue, granted = self.attached, False
        while queue is not None and (kind := queue.wants()) is not None:
            seat = self._take(kind)
            if seat is None:
                break
            if not queue.grant(Lease(seat)):  # cannot happen: ``kind`` waits for it
                self._held.discard(seat)
                with contextlib.suppress(OSError):
                    unlock(self._fd, seat)
                break
            granted = True
            self._drop_ticket(kind)  # to the back of the line for the next one
        return granted

    def _sync_waiting(self) -> bool:
        """Tickets for the kinds still waiting (none for the others), the marker and the
        re-check timer; True when a ticket was newly taken."""
        kinds = self.attached.kinds() if self.attached is not None else set()
        for kind in list(self._tickets):
            if kind not in kinds:
                self._drop_ticket(kind)
        fresh = False
        for kind in kinds:
            if kind not in self._tickets:
                at = ticket(kind, time.monotonic_ns())
                while not try_lock(self._fd, at):
                    at += 1
                self._tickets[kind] = at
                fresh = True
        if kinds:
            self._mark_waiting()
            if self._timer is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._ledger.safety_s, self._tick)
        else:
            self._unmark_waiting()
        return fresh

    def _tick(self) -> None:
        self._timer = None
        self.pump()

    def _drop_ticket(self, kind: Kind) -> None:
        at = self._tickets.pop(kind, None)
        if at is not None:
            with contextlib.suppress(OSError):
                unlock(self._fd, at)

    def _mark_waiting(self) -> None:
        if self._marker is not None:
            return
        self._ledger.listen()
        path = self._dir / "waiters" / self._ledger.token
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        kind: Kind = next(iter(self._tickets), "interactive")
        h = self._ledger.holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder(h.host, h.pid, h.command, kind, time.time()).to_json(), 0)
        try_lock(fd, 0)
        self._marker = fd

    def _unmark_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._marker is None:
            return
        with contextlib.suppress(OSError):
            (self._dir / "waiters" / self._ledger.token).unlink()
        os.close(self._marker)
        self._marker = None

    def _ring_others(self) -> None:
        """Wake the other waiting processes (cheap when there are none)."""
        if first_lock(self._fd, *TICKETS) is None:
            return
        mine = self._ledger.token
        folder = self._dir / "waiters"
        try:
            names = os.listdir(folder)
        except OSError:
            return
        for name in names:
            if name != mine and not self._ledger.ring(name):
                list(live_waiters(folder, prune=True))  # a dead waiter's marker goes

    def close(self) -> None:
        if self._closed:
            return
        if self.attached is not None:
            self.attached.fail_all()  # cancelled, as the ledger closes
        self._unmark_waiting()
        self._closed = True
        self._held.clear()
        self._tickets.clear()
        self._caps.close()
        for fd in (self._fd, self._records):
            with contextlib.suppress(OSError):
                os.close(fd)  # the kernel drops every lock of this open file


__all__ = ["HostLedger", "HostSeats", "default_dir"]
