"""Bench prompts: synthetic text of a given length, or a prompts file; the levels list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from familiar.config.slots import Slot
from familiar.errors import ConfigError
from familiar.fleetcheck.bench import default_levels, new_run_id, parse_levels, seat_plan
from familiar.fleetcheck.prompts import load_prompts, synthetic_prompt
from familiar.ledger import DeploymentView, deployment_id


def test_synthetic_prompts_have_the_length_and_differ() -> None:
    a = synthetic_prompt(0, 100)
    assert len(a.split()) == 99
    assert synthetic_prompt(0, 100) == a  # deterministic
    assert synthetic_prompt(1, 100).split()[1:] != a.split()[1:]
    assert synthetic_prompt(1, 100).split()[0] != a.split()[0]  # no shared prefix
    assert synthetic_prompt(0, 100, seed=1) != a
    assert len(synthetic_prompt(5, 1).split()) == 2
    with pytest.raises(ValueError):
        synthetic_prompt(0, 0)


def test_prompts_file_lines_and_jsonl(tmp_path: Path) -> None:
    lines = tmp_path / "p.txt"
    lines.write_text("first prompt\n\n  second one\n")
    assert load_prompts(lines) == ("first prompt", "  second one")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n"b"\n')
    assert load_prompts(jsonl) == ("a", "b")


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("empty.txt", "\n\n", "holds no prompt"),
        ("bad.jsonl", '{"prompt": "a"}\nnot json\n', "line 2 is not JSON"),
        ("shape.jsonl", '{"text": "a"}\n', "line 1"),
    ],
)
def test_bad_prompt_files_are_usage_errors(
    tmp_path: Path, name: str, text: str, match: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_prompts(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_prompts(tmp_path / "missing.txt")


def test_levels() -> None:
    assert parse_levels("8,1,2,2,4") == [1, 2, 4, 8]
    assert parse_levels("1..16") == [1, 2, 4, 8, 16]
    assert parse_levels("3..20, 100") == [3, 6, 12, 20, 100]
    for bad in ("", "1,,2", "x", "0", "4..2", "1..9999", "-1"):
        with pytest.raises(ValueError):
            parse_levels(bad)
    assert default_levels(1) == [1, 2, 4, 8]
    assert default_levels(6) == [1, 2, 4, 8, 16]
    assert default_levels(4096)[-1] == 2048
    assert re.fullmatch(r"19700101T000000Z-my_slot-[0-9a-f]{4}", new_run_id("my slot", 0.0))
    assert len({new_run_id("s", 0.0) for _ in range(3)}) > 1  # runs within one second


def test_seat_plan_covers_every_cap_in_use() -> None:
    a = Slot(name="a", url="http://h/v1", model="m", parallel=2, reserve=1)
    b = Slot(name="b", url="http://h/v1", model="m", parallel=3)
    other = Slot(name="c", url="http://h/v1", model="other", parallel=9)
    slots = {"a": a, "b": b, "c": other}
    assert seat_plan(slots, a, []) == (3, 1)
    view = DeploymentView(deployment_id(a.url, a.model), "m @ h", cap=5, reserve=0)
    assert seat_plan(slots, a, [view]) == (5, 1)
