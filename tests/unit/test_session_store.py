"""The session directory: typed records that keep today's keys, resume reading, listing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from familiar.config.workspace import load_config
from familiar.errors import StateError
from familiar.plan import Plan, Subtask
from familiar.session import (
    SessionState,
    SessionStore,
    SubtaskRecord,
    check_resumable,
    create_session_dir,
    list_sessions,
)

PLAN = Plan(
    goal="g",
    subtasks=(
        Subtask(id="s1", title="one", instructions="do one"),
        Subtask(id="s2", title="two", instructions="do two", depends_on=("s1",)),
    ),
)

#: the keys of a subtask record, in the order familiar has always written them
SUBTASK_KEYS = [
    "id",
    "status",
    "role",
    "slot",
    "preferred_role",
    "revision",
    "output",
    "decisions_kept",
    "notes",
    "prompt_version",
    "finish_reason",
    "checks",
    "attempts",
    "latency_s",
    "ttft_s",
    "completion_tokens",
    "replica",
]


def store(tmp_path: Path, sid: str = "s-1") -> SessionStore:
    d = tmp_path / "sessions" / sid
    (d / "subtasks").mkdir(parents=True)
    (d / "task.md").write_text("Write a guide to the Frobnicator")
    return SessionStore(d)


def current() -> dict[str, object]:
    return {
        "task_lang": "en",
        "lang": "en",
        "planner": "naughty",
        "roles": "naughty x kindergarten",
        "prompt_versions": {"plan.md": "abc"},
    }


def written(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data


def test_a_new_state_writes_only_the_keys_it_has_in_todays_order(tmp_path: Path) -> None:
    st = store(tmp_path)
    state = st.open_state(**current())
    state.record(status="running", started=1.0)
    st.save_state(state)
    assert list(written(st.state_path)) == [
        "id",
        "created",
        "steps",
        "task_lang",
        "lang",
        "planner",
        "roles",
        "prompt_versions",
        "status",
        "started",
        "updated",
    ]
    state.finish_step("plan", subtasks=2, fallback=False, fallback_reason=None)
    state.record(status="failed", failed={"s1": "boom"}, finished=2.0)
    st.save_state(state)
    data = written(st.state_path)
    assert list(data)[-2:] == ["failed", "finished"]
    assert data["steps"] == {
        "plan": {
            "finished": pytest.approx(data["updated"], abs=5),
            "subtasks": 2,
            "fallback": False,
            "fallback_reason": None,
        }
    }
    assert data["id"] == "s-1" and data["failed"] == {"s1": "boom"}


def test_an_older_state_loads_keeps_unknown_keys_and_is_updated(tmp_path: Path) -> None:
    st = store(tmp_path)
    st.state_path.write_text(json.dumps({"id": "s-1", "status": "failed", "steps": {}, "x": 7}))
    recorded = {"id": "s-1", "status": "failed", "steps": {}, "x": 7}
    assert st.read_state() == SessionState.model_validate(recorded)
    state = st.open_state(**current())
    assert state.status == "failed" and state.planner == "naughty" and state.created
    st.save_state(state)
    data = written(st.state_path)
    assert data["x"] == 7 and data["roles"] == "naughty x kindergarten"
    assert "error" not in data and "finished" not in data  # never set, never written


def test_a_state_of_the_wrong_shape_is_a_state_error_naming_the_file(tmp_path: Path) -> None:
    st = store(tmp_path)
    st.state_path.write_text(json.dumps({"id": "s-1", "steps": []}))
    with pytest.raises(StateError, match=r"session state .*session\.json is corrupt"):
        st.read_state()
    with pytest.raises(StateError, match=r"session\.json"):
        st.open_state(**current())


def record(sid: str = "s1", **changes: object) -> SubtaskRecord:
    fields: dict[str, object] = {
        "id": sid,
        "status": "ok",
        "role": "naughty",
        "slot": "naughty",
        "preferred_role": "naughty",
        "revision": False,
        "output": f"output of {sid}",
        "decisions_kept": [],
        "notes": "",
        "prompt_version": "abc",
        "finish_reason": "stop",
        "checks": [],
        "attempts": 1,
        "latency_s": 0.5,
        "ttft_s": None,
        "completion_tokens": 12,
        "replica": "http://127.0.0.1:1/v1",
        **changes,
    }
    return SubtaskRecord.model_validate(fields)


def test_a_subtask_record_keeps_its_keys_and_order(tmp_path: Path) -> None:
    st = store(tmp_path)
    st.save_subtask(record())
    assert list(written(st.subtask_path("s1"))) == SUBTASK_KEYS
    assert st.finished(PLAN) == {"s1": record()}


def test_older_and_unfinished_subtask_records(tmp_path: Path) -> None:
    st = store(tmp_path)
    st.subtask_path("s1").write_text(json.dumps({"id": "s1", "status": "ok", "output": "x"}))
    st.subtask_path("s2").write_text(json.dumps({"id": "s2", "status": "failed"}))
    done = st.finished(PLAN)
    assert list(done) == ["s1"] and done["s1"].output == "x" and done["s1"].role is None
    st.subtask_path("s1").write_text(json.dumps({"id": "s1", "status": "ok", "output": 3}))
    with pytest.raises(StateError, match=r"s1\.json is corrupt \(no output\)"):
        st.finished(PLAN)
    st.subtask_path("s1").write_text(
        json.dumps({"id": "s1", "status": "ok", "output": "x", "attempts": "many"})
    )
    with pytest.raises(StateError, match=r"s1\.json is corrupt \(1 invalid field"):
        st.finished(PLAN)


def test_plan_deliverable_and_translation_read_back(tmp_path: Path) -> None:
    st = store(tmp_path)
    assert (st.read_plan(), st.read_deliverable(), st.read_translation("ja")) == (None,) * 3
    st.save_plan(PLAN)
    st.save_integration({"deliverable": "D", "violations": [], "rounds": 0})
    st.save_translation("ja", "訳", "en")
    assert st.read_plan() == PLAN
    assert st.read_deliverable() == "D"
    assert st.read_translation("ja") == "訳"
    assert written(st.translation_path("ja")) == {"text": "訳", "from": "en", "to": "ja"}
    st.integration_path.write_text(json.dumps({"rounds": 1}))
    with pytest.raises(StateError, match="no deliverable"):
        st.read_deliverable()
    st.plan_path.write_text(json.dumps({"goal": "g", "subtasks": "none"}))
    with pytest.raises(StateError, match="remove it to plan again"):
        st.read_plan()


def test_rejected_answers_and_prompts_are_kept_beside_the_records(tmp_path: Path) -> None:
    st = store(tmp_path)
    st.save_prompt("s1", "## user\n\nhi")
    st.save_rejected("s1", ["empty", "empty"], "")
    assert st.subtask_path("s1", ".prompt.md").read_text() == "## user\n\nhi"
    assert written(st.subtask_path("s1", ".rejected.json")) == {
        "id": "s1",
        "status": "rejected",
        "checks": ["empty", "empty"],
        "answer": "",
    }
    assert st.finished(PLAN) == {}
    check_resumable(st.dir)  # a rejected answer is not a record to check


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("session.json", '{"status": "do'),
        ("plan.json", '{"goal": "g", "subta'),
        ("subtasks/s1.json", "[1, 2, 3]"),
        ("integration.json", "{"),
        ("final.ja.json", "nope"),
    ],
)
def test_check_resumable_names_the_corrupt_file_and_writes_nothing(
    tmp_path: Path, name: str, text: str
) -> None:
    st = store(tmp_path)
    (st.dir / name).write_text(text)
    before = sorted(p.name for p in st.dir.rglob("*"))
    with pytest.raises(StateError, match=name.split("/")[-1].replace(".", r"\.")):
        check_resumable(st.dir)
    assert sorted(p.name for p in st.dir.rglob("*")) == before


def test_list_sessions_shows_unreadable_sessions_instead_of_failing(tmp_path: Path) -> None:
    good, bad, bare = store(tmp_path, "s-good"), store(tmp_path, "s-bad"), store(tmp_path, "s-0")
    state = good.open_state(**current())
    state.record(status="done", started=10.0, finished=12.34)
    good.save_state(state)
    bad.state_path.write_text('{"status": "do')
    os.utime(bad.dir, (1, 1))  # oldest first
    rows = {r.id: r for r in list_sessions(tmp_path)}
    assert bare.id not in rows  # no session.json yet
    assert rows["s-good"].model_dump() == {
        "id": "s-good",
        "status": "done",
        "roles": "naughty x kindergarten",
        "started": 10.0,
        "duration_s": 2.3,
        "task": "Write a guide to the Frobnicator",
        "error": None,
        "prompt_tokens": None,
        "cached_tokens": None,
    }
    assert rows["s-bad"].status == "unreadable" and "corrupt" in (rows["s-bad"].error or "")
    assert [r.id for r in list_sessions(tmp_path)] == ["s-bad", "s-good"]
    assert list_sessions(tmp_path / "nowhere") == []


def test_create_session_dir_writes_the_task_and_config_once(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, None, "naughty x translator")
    d = create_session_dir(cfg, "Do the thing", "s-new")
    assert d == cfg.home / "sessions" / "s-new"
    assert (d / "task.md").read_text() == "Do the thing"
    assert written(d / "config.json")["roles"] == "naughty x translator"
    with pytest.raises(StateError, match="cannot create a session"):
        create_session_dir(cfg, "Do the thing", "s-new")


def test_list_sessions_shows_the_runs_prompt_and_cached_tokens(tmp_path: Path) -> None:
    good, odd = store(tmp_path, "s-good"), store(tmp_path, "s-odd")
    state = good.open_state(**current())
    state.record(status="done", totals={"prompt_tokens": 900, "cached_tokens": 600})
    good.save_state(state)
    state = odd.open_state(**current())
    state.record(status="done", totals={"prompt_tokens": "many", "cached_tokens": -1})
    odd.save_state(state)
    rows = {r.id: r for r in list_sessions(tmp_path)}
    assert (rows["s-good"].prompt_tokens, rows["s-good"].cached_tokens) == (900, 600)
    assert (rows["s-odd"].prompt_tokens, rows["s-odd"].cached_tokens) == (None, None)
