"""Role policy: routing by difficulty, stealing, planner choice, runnable configurations;
and the dispatcher's statistics snapshots showing the policy at work."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from familiar import dispatch, routing
from familiar.config.workspace import Config, load_config
from familiar.dispatch import Dispatcher, Pool, WorkBoard, WorkItem
from familiar.errors import ConfigError
from familiar.routing import (
    PLANNERS,
    STEALS,
    check_runnable,
    planner_role,
    preferred_role,
    revising_role,
    takes_from,
)


def config(tmp_path: Path, roles: str) -> Config:
    return load_config(tmp_path, None, roles)  # the shipped slots file


def test_hard_work_goes_to_naughty_and_easy_work_to_kindergarten() -> None:
    assert preferred_role("hard") == "naughty"
    assert preferred_role("easy") == "kindergarten"


def test_the_two_workers_stand_in_for_each_other_and_nobody_else_steals() -> None:
    assert dispatch.STEALS is STEALS  # one policy, imported by the dispatcher
    assert takes_from("naughty") == ("naughty", "kindergarten")
    assert takes_from("kindergarten") == ("kindergarten", "naughty")
    assert takes_from("translator") == ("translator",)
    assert takes_from("grandpa") == ("grandpa",)
    assert all(victim not in ("translator", "grandpa") for v in STEALS.values() for victim in v)


def test_takes_from_honours_a_given_policy() -> None:
    assert takes_from("naughty", {}) == ("naughty",)
    assert takes_from("a", {"a": ("b", "c")}) == ("a", "b", "c")


@pytest.mark.parametrize(
    ("roles", "planner"),
    [
        ("full", "grandpa"),
        ("standard", "naughty"),
        ("minimal", "naughty"),
        ("kindergarten x translator", "kindergarten"),
        ("kindergarten x naughty", "naughty"),
    ],
)
def test_the_planner_is_grandpa_else_the_strongest_worker(
    tmp_path: Path, roles: str, planner: str
) -> None:
    assert PLANNERS == ("grandpa", "naughty", "kindergarten")
    assert planner_role(config(tmp_path, roles)) == planner
    assert routing.planner_role is planner_role


def test_a_translator_only_configuration_cannot_run_a_session(tmp_path: Path) -> None:
    cfg = config(tmp_path, "translator")
    with pytest.raises(ConfigError, match="no planner or worker role"):
        planner_role(cfg)
    with pytest.raises(ConfigError):
        check_runnable(cfg, "en", None)


def test_another_language_needs_the_translator(tmp_path: Path) -> None:
    check_runnable(config(tmp_path, "naughty x translator"), "en", "ja")
    check_runnable(config(tmp_path, "naughty"), "en", "en")
    check_runnable(config(tmp_path, "naughty"), "en", None)
    with pytest.raises(ConfigError, match="translator role is not active"):
        check_runnable(config(tmp_path, "naughty"), "en", "ja")


def test_a_revision_goes_to_the_role_that_wrote_it_while_it_is_active() -> None:
    assert revising_role("kindergarten", ("naughty", "kindergarten")) == "kindergarten"
    assert revising_role("kindergarten", ("naughty",)) == "naughty"
    assert revising_role(None, ("kindergarten", "naughty")) == "kindergarten"


async def test_an_idle_pool_steals_and_the_statistics_show_it() -> None:
    release = asyncio.Event()

    async def handler(item: WorkItem[int], pool: Pool) -> str:
        await release.wait()
        return pool.role

    pools = [Pool("naughty", "n", 1), Pool("kindergarten", "k", 1)]
    async with Dispatcher(pools, handler) as d:
        first = await d.submit(WorkItem("h1", "naughty", 0))
        second = await d.submit(WorkItem("h2", "naughty", 0))
        await asyncio.sleep(0.01)
        busy = d.statistics()
        release.set()
        results = await asyncio.gather(first, second)
        done = d.statistics()
    assert {r.ran_as for r in results} == {"naughty", "kindergarten"}
    assert [(p.role, p.busy, p.done, p.stolen) for p in busy.pools] == [
        ("naughty", 1, 0, 0),
        ("kindergarten", 1, 0, 1),
    ]
    assert [(p.role, p.busy, p.done, p.stolen) for p in done.pools] == [
        ("naughty", 0, 1, 0),
        ("kindergarten", 0, 1, 1),
    ]
    assert busy.board.queued == 0 and not busy.board.closed


async def test_board_statistics_are_frozen_snapshots() -> None:
    board: WorkBoard[int] = WorkBoard(4)
    await board.put(WorkItem("a", "naughty", 0))
    await board.put(WorkItem("b", "translator", 0))
    snap = board.statistics()
    assert (snap.maxsize, snap.queued, dict(snap.pending)) == (
        4,
        2,
        {"naughty": 1, "translator": 1},
    )
    await board.take(["naughty"])
    await board.close()
    assert (snap.queued, dict(snap.pending), snap.closed) == (
        2,
        {"naughty": 1, "translator": 1},
        False,
    )
    later = board.statistics()
    assert (later.queued, dict(later.pending), later.closed) == (1, {"translator": 1}, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.queued = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.pending["naughty"] = 0  # type: ignore[index]
