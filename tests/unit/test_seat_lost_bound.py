"""A request whose seat keeps being taken (a bus writer purging seats over and over) fails
after a bounded number of losses instead of asking for ever."""

from __future__ import annotations

from typing import Any

import pytest

from familiar.client import backend
from familiar.client.backend import SlotClient
from familiar.config.slots import Slot
from familiar.errors import SeatLost


async def test_an_attempt_gives_up_after_a_bounded_number_of_lost_seats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0

    async def always_lost(self: SlotClient, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        raise SeatLost("seat 0 taken")

    monkeypatch.setattr(SlotClient, "_attempt_on_seat", always_lost)
    async with SlotClient(Slot(name="s", url="http://127.0.0.1:9/v1", model="m")) as client:
        with pytest.raises(SeatLost):
            await client._attempt("chat", {"messages": []}, None, 1, [])
        assert calls == backend.MAX_SEATS_LOST + 1
        assert client.seats_lost == backend.MAX_SEATS_LOST + 1
