"""Fleet: one SlotClient per active slot, with the embedded backend resolved; the one
place a role becomes clients (:meth:`Fleet.pools`, :meth:`Fleet.client_for`).

Seats belong to a deployment (URLs plus model), not to a slot's name: slots that
point at the same URLs and model (e.g. every role bound to the embedded llama-server)
share one ``Seats`` object, so their sum in flight never exceeds the deployment's
``parallel``. Different models behind one gateway URL are different deployments.
Each deployment's seats are held in the ledger (``familiar.ledger``: the host ledger by
default, NATS JetStream when configured), so every familiar process shares the cap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from familiar.client.backend import Hook, RetryPolicy, SlotClient
from familiar.config.slots import Slot
from familiar.dispatch import Pool
from familiar.ledger import Kind, Ledger, deployment_id, deployment_label, make_ledger
from familiar.seats import Seats

if TYPE_CHECKING:
    from familiar.config.workspace import Config

Deployment = tuple[tuple[str, ...], str]


def parallel_conflicts(slots: Mapping[str, Slot]) -> list[str]:
    """One message per deployment whose slots disagree on ``parallel`` (the strictest
    cap wins at run time; ``config validate`` warns)."""
    groups: dict[Deployment, list[Slot]] = {}
    for slot in slots.values():
        if not slot.embedded:
            groups.setdefault(slot.deployment, []).append(slot)
    out = []
    for (_urls, model), members in groups.items():
        caps = {s.parallel for s in members}
        if len(caps) > 1:
            names = ", ".join(f"{s.name} (parallel {s.parallel})" for s in members)
            out.append(
                f"slots {names} name one deployment (same URLs, model {model!r}) but disagree"
                f" on parallel; the strictest, {min(caps)}, applies to all of them"
            )
    return out


class Fleet:
    """Owns the clients of a run; ``async with Fleet(...) as fleet: fleet[slot_name]``."""

    def __init__(
        self,
        slots: Mapping[str, Slot],
        *,
        home: Path,
        transport: Any = None,
        retry: RetryPolicy | None = None,
        hooks: Sequence[Hook] = (),
        local_seats: int = 4,
        ledger: Ledger | None = None,
        kind: Kind = "interactive",
    ) -> None:
        """``ledger``: where seats are held (default: the host ledger); ``kind``: the
        work of this run (``batch`` may not take a slot's ``reserve`` seats)."""
        self._slots = dict(slots)
        self._home = home
        self._transport = transport
        self._retry = retry
        self._hooks = list(hooks)
        self._local_seats = local_seats
        self.ledger = ledger if ledger is not None else make_ledger()
        self.kind: Kind = kind
        self._stack = AsyncExitStack()
        self.clients: dict[str, SlotClient] = {}
        self.seats: dict[Deployment, Seats] = {}
        self._caps: dict[Deployment, int] = {}

    def __getitem__(self, slot: str) -> SlotClient:
        return self.clients[slot]

    def pools(self, cfg: Config, role: str, *, queue: str | None = None) -> list[Pool]:
        """One dispatcher pool per slot serving ``role`` in ``cfg``, as many seats as its
        deployment has; ``queue``: the work it takes (default: the role's own)."""
        return [
            Pool(queue or role, slot.name, self[slot.name].seats.total, self[slot.name])
            for slot in cfg.slots_for(role)
        ]

    def client_for(self, cfg: Config, role: str) -> SlotClient:
        """The client of the first slot serving ``role``."""
        return self[cfg.slots_for(role)[0].name]

    async def __aenter__(self) -> Fleet:
        try:
            await self._stack.enter_async_context(self.ledger)
            resolved = await self._resolve_embedded()
            reserves: dict[Deployment, int] = {}
            for slot in resolved.values():  # the strictest cap of a deployment wins
                key = slot.deployment
                self._caps[key] = min(slot.parallel, self._caps.get(key, slot.parallel))
                reserves[key] = max(slot.reserve, reserves.get(key, 0))
            for key, cap in self._caps.items():
                urls, model = key
                ledger = self.ledger.deployment(
                    deployment_id(urls, model),
                    deployment_label(urls, model),
                    cap,
                    min(reserves[key], cap - 1),
                )
                self.seats[key] = Seats(cap, ledger=ledger, kind=self.kind)
            for name, slot in resolved.items():
                client = SlotClient(
                    slot,
                    seats=self.seats[slot.deployment],
                    transport=self._transport,
                    retry=self._retry,
                    hooks=self._hooks,
                )
                self._stack.push_async_callback(client.aclose)
                self.clients[name] = client
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _resolve_embedded(self) -> dict[str, Slot]:
        if not any(s.embedded for s in self._slots.values()):
            return self._slots
        from familiar.local import LocalServer  # the extra is optional

        server = LocalServer(self._home, seats=self._local_seats)
        info = await self._stack.enter_async_context(server.running(owned=True))
        return {
            name: slot.model_copy(update={"url": (info.base_url,), "parallel": info.seats})
            if slot.embedded
            else slot
            for name, slot in self._slots.items()
        }
