"""Tests for familiar.config.roles: the role configuration string grammar and its errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from familiar.config.roles import (
    PRESETS,
    ROLES,
    TIMES,
    WORKER_ROLES,
    RoleAssignment,
    RoleConfig,
    parse_role_string,
)
from familiar.errors import ConfigError, RoleStringError


def pairs(config: RoleConfig) -> list[tuple[str, str]]:
    return [(a.role, a.slot) for a in config.assignments]


# --- constants and presets ---------------------------------------------------------------


def test_constants() -> None:
    assert ROLES == ("grandpa", "naughty", "kindergarten", "translator")
    assert WORKER_ROLES == ("naughty", "kindergarten")
    assert TIMES == "\u00d7"
    assert set(PRESETS) == {"full", "standard", "minimal"}


@pytest.mark.parametrize(
    ("preset", "roles"),
    [
        ("full", ("grandpa", "naughty", "kindergarten", "translator")),
        ("standard", ("naughty", "kindergarten", "translator")),
        ("minimal", ("naughty", "translator")),
        ("  FULL ", ("grandpa", "naughty", "kindergarten", "translator")),
        ("Minimal", ("naughty", "translator")),
    ],
)
def test_presets(preset: str, roles: tuple[str, ...]) -> None:
    config = parse_role_string(preset)
    assert config.roles == roles
    assert config.source == preset.strip()
    assert all(a.slot == a.role for a in config.assignments)
    assert config.canonical() == " x ".join(roles)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_parses(name: str) -> None:
    assert parse_role_string(name).canonical() == PRESETS[name]


# --- grammar -------------------------------------------------------------------------------

NT = [("naughty", "naughty"), ("translator", "translator")]


@pytest.mark.parametrize(
    "text",
    [
        "naughty x translator",
        f"naughty{TIMES}translator",
        f"naughty {TIMES} translator",
        f"naughty{TIMES} translator",
        f"naughty  {TIMES}translator",
        "NAUGHTY  X  Translator",
        "naughty X translator",
        "  naughty x translator  ",
        "\tnaughty\tx\ttranslator\n",
        "naughty\nx\ntranslator",
        "Naughty x TRANSLATOR",
    ],
)
def test_separators_case_and_whitespace(text: str) -> None:
    config = parse_role_string(text)
    assert pairs(config) == NT
    assert config.source == text.strip()


def test_mixed_separators() -> None:
    config = parse_role_string(f"grandpa x naughty{TIMES}kindergarten X translator")
    assert config.roles == ROLES


def test_single_worker_alone() -> None:
    assert pairs(parse_role_string("kindergarten")) == [("kindergarten", "kindergarten")]
    assert pairs(parse_role_string("naughty")) == [("naughty", "naughty")]


def test_translator_only() -> None:
    config = parse_role_string("translator")
    assert config.roles == ("translator",)
    assert config.workers == ()
    config = parse_role_string("translator@a x translator@b")
    assert config.slots_for("translator") == ("a", "b")
    assert config.workers == ()


def test_slots() -> None:
    config = parse_role_string("naughty x kindergarten@Fast-1 x translator@gpu_2")
    assert pairs(config) == [
        ("naughty", "naughty"),
        ("kindergarten", "fast-1"),
        ("translator", "gpu_2"),
    ]
    assert config.slot_for("kindergarten") == "fast-1"
    assert config.slot_for("naughty") == "naughty"
    assert config.canonical() == "naughty x kindergarten@fast-1 x translator@gpu_2"


def test_explicit_default_slot_is_dropped_from_canonical() -> None:
    config = parse_role_string("naughty@naughty x translator")
    assert config.canonical() == "naughty x translator"


def test_role_on_several_slots() -> None:
    config = parse_role_string("naughty@a x naughty@b x translator x naughty")
    assert config.roles == ("naughty", "translator")
    assert config.workers == ("naughty",)
    assert config.slots_for("naughty") == ("a", "b", "naughty")
    assert config.slot_for("naughty") == "a"


def test_config_accessors() -> None:
    config = parse_role_string("translator x kindergarten x grandpa x naughty")
    assert config.roles == ("translator", "kindergarten", "grandpa", "naughty")
    assert config.workers == ("kindergarten", "naughty")
    assert config.has("grandpa")
    assert not parse_role_string("minimal").has("grandpa")
    assert parse_role_string("minimal").slots_for("grandpa") == ()
    with pytest.raises(KeyError):
        parse_role_string("minimal").slot_for("grandpa")


def test_slot_may_contain_x() -> None:
    config = parse_role_string("naughty@x x translator@x1")
    assert pairs(config) == [("naughty", "x"), ("translator", "x1")]


def test_models_are_frozen_and_strict() -> None:
    config = parse_role_string("minimal")
    with pytest.raises(ValueError, match="frozen"):
        config.source = "other"
    with pytest.raises(ValueError, match="unknown role"):
        RoleAssignment(role="nobody", slot="a")
    with pytest.raises(ValueError, match="bad slot"):
        RoleAssignment(role="naughty", slot="-bad")
    assert RoleAssignment(role="naughty", slot="a").term() == "naughty@a"


@pytest.mark.parametrize(
    "text",
    [
        "full",
        "naughty",
        "translator@t x translator@u",
        "naughty@a x naughty@b x kindergarten@c x grandpa@g x translator",
    ],
)
def test_canonical_round_trip(text: str) -> None:
    config = parse_role_string(text)
    again = parse_role_string(config.canonical())
    assert again.assignments == config.assignments
    assert again.canonical() == config.canonical()


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("naugty x translator", ["unknown role 'naugty'", "term 1", "did you mean 'naughty'"]),
        ("naughty x translater", ["unknown role 'translater'", "term 2", "'translator'"]),
        ("naughty x Kindergarden", ["'Kindergarden'", "term 2", "'kindergarten'"]),
        ("naughty x zzzz", ["unknown role 'zzzz'", "term 2", "known roles: grandpa"]),
        ("naughtyxtranslator", ["'naughtyxtranslator'", "did you mean 'naughty x translator'"]),
        ("", ["empty role string", "presets: full, standard, minimal"]),
        ("   ", ["empty role string"]),
        ("naughty x", ["dangling separator 'x'", "'naughty'"]),
        (f"naughty {TIMES}", ["dangling separator", "after the last term"]),
        ("x naughty", ["dangling separator 'x'", "before the first term"]),
        (f"{TIMES}naughty", ["dangling separator", "before the first term"]),
        ("naughty x x translator", ["doubled separator 'x'", "term 1 'naughty'"]),
        (f"naughty {TIMES}{TIMES} translator", ["doubled separator", "term 1 'naughty'"]),
        (f"naughty x {TIMES} translator", ["doubled separator", "term 1"]),
        ("naughty, translator", ["stray character ','", "'naughty,'", "term 1"]),
        ("naughty x transl@tor!", ["stray character '!'", "'transl@tor!'", "term 2"]),
        ("naughty/kindergarten", ["stray character '/'", "'naughty/kindergarten'"]),
        ("naughty * translator", ["stray character '*'", "term 2"]),
        ("naughty x translator@a.b", ["stray character '.'", "'translator@a.b'"]),
        ("naughty x transl@tor", ["unknown role 'transl'", "term 2"]),
        ("naughty translator", ["missing separator", "'naughty'", "'translator'"]),
        ("naughty@", ["bad slot name ''", "'naughty@'", "term 1"]),
        ("naughty@_a x translator", ["bad slot name '_a'", "'naughty@_a'"]),
        ("naughty@a@b", ["bad slot name 'a@b'", "'naughty@a@b'"]),
        ("@fast x translator", ["missing role name", "'@fast'", "term 1"]),
        ("naughty x naughty", ["role 'naughty' repeated on slot 'naughty'", "terms 1 and 2"]),
        ("naughty@a x translator x NAUGHTY@A", ["repeated on slot 'a'", "terms 1 and 3"]),
        ("naughty@naughty x naughty", ["repeated on slot 'naughty'"]),
        ("grandpa x translator", ["'grandpa' needs a worker role", "naughty or kindergarten"]),
        ("grandpa", ["'grandpa' needs a worker role"]),
        ("full x naughty", ["preset 'full'", "must be used alone"]),
    ],
)
def test_errors_name_the_bad_token(text: str, fragments: list[str]) -> None:
    with pytest.raises(RoleStringError) as info:
        parse_role_string(text)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert isinstance(info.value, ConfigError)


def test_unknown_role_message_format() -> None:
    with pytest.raises(RoleStringError) as info:
        parse_role_string("naugty x translator")
    assert str(info.value) == (
        "unknown role 'naugty' (term 1 of 'naugty x translator'); did you mean 'naughty'? "
        "known roles: grandpa, naughty, kindergarten, translator; "
        "presets: full, standard, minimal"
    )


# --- property: any valid assignment list survives rendering --------------------------------

slot_names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,8}", fullmatch=True)
spaces = st.sampled_from(["", " ", "  ", "\t", " \t "])
wide = st.sampled_from([" ", "  ", "\t", " \t "])


@st.composite
def assignment_lists(draw: st.DrawFn) -> list[tuple[str, str]]:
    items = draw(
        st.lists(
            st.tuples(st.sampled_from(ROLES), st.one_of(st.none(), slot_names)),
            min_size=1,
            max_size=6,
        )
    )
    result = list(dict.fromkeys((role, slot or role) for role, slot in items))
    roles = {role for role, _ in result}
    if not roles & set(WORKER_ROLES) and roles != {"translator"}:
        result.append((draw(st.sampled_from(WORKER_ROLES)), draw(slot_names)))
        result = list(dict.fromkeys(result))
    return result


def random_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


@st.composite
def rendered(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    assignments = draw(assignment_lists())
    parts = [draw(spaces)]
    for index, (role, slot) in enumerate(assignments):
        if index:
            if draw(st.booleans()):
                parts.append(draw(spaces) + TIMES + draw(spaces))
            else:
                parts.append(draw(wide) + draw(st.sampled_from("xX")) + draw(wide))
        explicit = slot != role or draw(st.booleans())
        parts.append(random_case(draw, f"{role}@{slot}" if explicit else role))
    parts.append(draw(spaces))
    return "".join(parts), assignments


@settings(database=None, max_examples=300)
@given(rendered())
def test_rendered_assignments_parse_back(case: tuple[str, list[tuple[str, str]]]) -> None:
    text, assignments = case
    config = parse_role_string(text)
    assert pairs(config) == assignments
    assert pairs(parse_role_string(config.canonical())) == assignments
