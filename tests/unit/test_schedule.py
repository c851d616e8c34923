"""Dependency release, pure: ready, waiting and skipped subtasks of a plan."""

from __future__ import annotations

from familiar.plan import Plan, Subtask
from familiar.session.schedule import schedule, skip_reason


def plan(deps: dict[str, tuple[str, ...]]) -> Plan:
    """A plan whose subtasks (in dict order) depend on the given ids."""
    return Plan(
        goal="g",
        subtasks=tuple(
            Subtask(id=sid, title=sid, instructions="do it", depends_on=d)
            for sid, d in deps.items()
        ),
    )


# s1, s2 -> s3 -> s4; s5 alone
DIAMOND = plan({"s1": (), "s2": (), "s3": ("s1", "s2"), "s4": ("s3",), "s5": ()})


def ids(subtasks: tuple[Subtask, ...]) -> list[str]:
    return [s.id for s in subtasks]


def test_at_the_start_every_subtask_without_dependencies_is_ready_in_plan_order() -> None:
    step = schedule(DIAMOND, set(), [], set())
    assert ids(step.ready) == ["s1", "s2", "s5"]
    assert step.waiting == ("s3", "s4")
    assert step.skipped == {}


def test_in_flight_subtasks_are_not_ready_again() -> None:
    step = schedule(DIAMOND, set(), [], {"s1", "s2", "s5"})
    assert step.ready == () and step.waiting == ("s3", "s4")


def test_a_subtask_is_ready_only_when_all_of_its_dependencies_are_done() -> None:
    assert ids(schedule(DIAMOND, {"s1"}, [], {"s2", "s5"}).ready) == []
    assert ids(schedule(DIAMOND, {"s1", "s2"}, [], {"s5"}).ready) == ["s3"]
    assert ids(schedule(DIAMOND, {"s1", "s2", "s3", "s5"}, [], set()).ready) == ["s4"]


def test_everything_done_leaves_nothing_to_do() -> None:
    step = schedule(DIAMOND, {"s1", "s2", "s3", "s4", "s5"}, [], set())
    assert (step.ready, step.waiting, step.skipped) == ((), (), {})


def test_a_failure_skips_every_dependent_directly_or_not() -> None:
    step = schedule(DIAMOND, {"s2"}, ["s1"], {"s5"})
    assert step.skipped == {"s3": skip_reason("s1"), "s4": skip_reason("s1")}
    assert step.skipped["s3"] == "skipped: depends on failed s1"
    assert step.ready == () and step.waiting == ()


def test_independent_work_goes_on_after_a_failure() -> None:
    step = schedule(DIAMOND, set(), ["s1"], set())
    assert ids(step.ready) == ["s2", "s5"]
    assert set(step.skipped) == {"s3", "s4"}


def test_skips_already_recorded_are_not_reported_again() -> None:
    step = schedule(DIAMOND, {"s2"}, ["s1", "s3", "s4"], set())
    assert step.skipped == {}
    assert ids(step.ready) == ["s5"]


def test_the_first_failure_in_order_names_the_reason() -> None:
    step = schedule(DIAMOND, set(), ["s2", "s1"], set())
    assert step.skipped == {"s3": skip_reason("s2"), "s4": skip_reason("s2")}


def test_a_dependent_of_a_failure_is_never_ready_even_when_its_own_inputs_are_done() -> None:
    # resume: s3 finished in an earlier run, s1's record was removed and s1 fails now
    step = schedule(DIAMOND, {"s2", "s3"}, ["s1"], set())
    assert "s4" in step.skipped and ids(step.ready) == ["s5"]


def test_schedule_reads_but_never_changes_its_inputs() -> None:
    done, failed, in_flight = {"s2"}, ["s1"], {"s5"}
    schedule(DIAMOND, done, failed, in_flight)
    assert (done, failed, in_flight) == ({"s2"}, ["s1"], {"s5"})
