"""Roles by kind: the shipped policy is what the shipped role files say, and a workspace
role file adds a role whose behaviour follows its ``kind`` (and a worker's ``takes``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from familiar import routing
from familiar.config.roles import PRESETS, SHIPPED_KINDS, parse_role_string
from familiar.config.workspace import load_config, load_roles, role_kinds, role_names
from familiar.errors import RoleFileError, RoleStringError


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def role_file(ws: Path, name: str, kind: str, extra: str = "") -> None:
    write(
        ws / "roles" / f"{name}.toml",
        f'[role]\nname = "{name}"\nkind = "{kind}"\nprompt = "{name}.md"\n'
        f'default_slot = "{name}"\n{extra}',
    )
    write(ws / "prompts" / f"{name}.md", f"You are {name}.\n")


def slots(ws: Path, *names: str) -> None:
    write(
        ws / "slots.toml",
        "".join(f'[slots.{n}]\nurl = "http://h/v1"\nmodel = "{n}"\n' for n in names),
    )


def test_the_shipped_policy_is_what_the_shipped_role_files_say(tmp_path: Path) -> None:
    specs = load_roles(tmp_path)  # an empty workspace: the shipped files only
    assert role_kinds(specs) == dict(SHIPPED_KINDS)
    assert routing.planners_of(specs) == routing.PLANNERS
    assert routing.preferences(specs) == dict(routing.PREFERRED)
    assert routing.steals_of(specs) == dict(routing.STEALS)
    for preset in PRESETS:  # presets parse the same with the kinds the files give
        assert parse_role_string(preset, role_kinds(specs)) == parse_role_string(preset)


def test_a_workspace_role_file_adds_a_role(tmp_path: Path) -> None:
    role_file(tmp_path, "toddler", "worker")
    write(tmp_path / "roles" / "slots.toml", "")  # not a role file
    write(tmp_path / "roles" / "full.toml", "")  # a preset's name: never a role
    write(tmp_path / "roles" / "Bad.toml", "")  # no role string can spell it
    assert role_names(tmp_path) == ("grandpa", "naughty", "kindergarten", "translator", "toddler")
    slots(tmp_path, "naughty", "toddler")
    cfg = load_config(tmp_path, None, "naughty x toddler")
    assert cfg.role_config.workers == ("naughty", "toddler")
    assert [s.name for s in cfg.slots_for("toddler")] == ["toddler"]
    # hard work still goes to the worker taking it; the new worker stands in for any other
    assert routing.preferred_role("hard", cfg) == "naughty"
    assert routing.preferred_role("easy", cfg) == "kindergarten"  # toddler steals it
    assert routing.takes_from("toddler", routing.steals(cfg)) == (
        "toddler",
        "naughty",
        "kindergarten",
    )
    assert routing.takes_from("naughty", routing.steals(cfg))[-1] == "toddler"
    assert routing.planner_role(cfg) == "naughty"


def test_kinds_not_names_decide(tmp_path: Path) -> None:
    role_file(tmp_path, "boss", "planner")
    role_file(tmp_path, "fast", "worker", 'takes = ["easy", "hard"]\n')
    role_file(tmp_path, "lingo", "translator")
    slots(tmp_path, "boss", "fast", "lingo")
    cfg = load_config(tmp_path, None, "fast x boss x lingo")
    assert routing.planner_role(cfg) == "boss"
    assert routing.translator_role(cfg) == "lingo"
    routing.check_runnable(cfg, "en", "ja")  # a translator-kind role is active
    cfg = load_config(tmp_path, None, "lingo")  # translators alone: a translation setup
    assert cfg.role_config.workers == ()
    with pytest.raises(RoleStringError, match="'boss' needs a worker role"):
        load_config(tmp_path, None, "boss x lingo")


def test_only_a_worker_takes_subtasks(tmp_path: Path) -> None:
    role_file(tmp_path, "boss", "planner", 'takes = ["hard"]\n')
    with pytest.raises(RoleFileError, match=r"boss\.toml.*only a worker takes subtasks"):
        load_roles(tmp_path)


def test_without_any_worker_taking_a_difficulty_the_first_active_worker_gets_it(
    tmp_path: Path,
) -> None:
    role_file(tmp_path, "naughty", "worker")  # an override without `takes`
    slots(tmp_path, "naughty")
    cfg = load_config(tmp_path, None, "naughty")
    assert routing.preferred_role("hard", cfg) == "naughty"
    assert routing.preferred_role("easy", cfg) == "kindergarten"
