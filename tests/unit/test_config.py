"""Slots file, role files, config resolution and prompts: pure file parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from familiar.config.slots import Slot, load_slots
from familiar.config.workspace import load_config, slots_path
from familiar.errors import PromptError, RoleFileError, RoleStringError, SlotsFileError
from familiar.session.prompts import load_prompt

FLEET = """
[slots.naughty]
url = ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1/"]
model = "big"
runtime = "vllm"
parallel = 3
api_key_env = "NAUGHTY_KEY"

[slots.kindergarten]
url = "http://10.0.0.3:8080/v1"
model = "fast"
runtime = "llama.cpp"
parallel = 5

[slots.translator]
url = "http://10.0.0.4:8081/v1"
model = "plamo"
runtime = "llama.cpp"
parallel = 2
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_slots_file_parses_replicas_and_defaults(tmp_path: Path) -> None:
    slots = load_slots(write(tmp_path / "slots.toml", FLEET))
    assert slots["naughty"].url == ("http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1")
    assert slots["kindergarten"].url == ("http://10.0.0.3:8080/v1",)
    assert slots["kindergarten"].parallel == 5
    assert slots["naughty"].supports_json_schema


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[slots.a]\nurl = "ftp://x"\nmodel = "m"', "url"),
        ('[slots.a]\nurl = "http://x"\nmodel = "m"\nparallel = 0', "parallel"),
        ('[slots.a]\nurl = "http://x"\nmodel = "m"\nruntime = "tgi"', "runtime"),
        ('[slots.a]\nurl = "http://x"\nmodel = "m"\napi_key = "sk-1"', "api_key"),
        ('[slots.a]\nurl = "http://x"', "model"),
        ("[other]\nx = 1", r"no \[slots"),
        ("[slots.a\n", "invalid TOML"),
    ],
)
def test_bad_slots_file_names_the_problem(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(SlotsFileError, match=needle):
        load_slots(write(tmp_path / "slots.toml", body))


def test_api_key_comes_from_env_and_is_not_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Slot(name="a", url="http://x/v1", model="m", api_key_env="K")
    assert s.api_key() is None
    monkeypatch.setenv("K", "sk-very-secret")
    assert s.api_key() == "sk-very-secret"
    assert "sk-very-secret" not in repr(s) and "sk-very-secret" not in s.model_dump_json()


def test_slots_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path
    assert slots_path(ws).name == "slots.toml" and slots_path(ws).parent.name == "roles"
    write(ws / "slots.toml", FLEET)
    assert slots_path(ws) == ws / "slots.toml"
    monkeypatch.setenv("FAMILIAR_SLOTS", str(tmp_path / "env.toml"))
    assert slots_path(ws) == tmp_path / "env.toml"
    assert slots_path(ws, tmp_path / "cli.toml") == tmp_path / "cli.toml"


def test_config_from_claude_md_binds_roles_to_slots(tmp_path: Path) -> None:
    write(tmp_path / "CLAUDE.md", "# ws\n\nfamiliar: naughty x kindergarten@translator\n")
    write(tmp_path / "slots.toml", FLEET)
    cfg = load_config(workspace=tmp_path)
    assert cfg.role_source == "CLAUDE.md"
    assert [s.name for s in cfg.slots_for("naughty")] == ["naughty"]
    assert [s.name for s in cfg.slots_for("kindergarten")] == ["translator"]
    assert set(cfg.active_slots) == {"naughty", "translator"}
    assert cfg.home == tmp_path / "home" or cfg.home.name == "home"  # FAMILIAR_HOME fixture


def test_config_defaults_without_claude_md(tmp_path: Path) -> None:
    cfg = load_config(workspace=tmp_path)
    assert cfg.role_source == "default"
    assert cfg.role_config.canonical() == "naughty x kindergarten x translator"
    assert all(s.embedded for s in cfg.active_slots.values())


def test_config_errors(tmp_path: Path) -> None:
    write(tmp_path / "slots.toml", FLEET)
    with pytest.raises(SlotsFileError, match="'nowhere'"):
        load_config(workspace=tmp_path, roles="naughty@nowhere")
    with pytest.raises(RoleStringError):
        load_config(workspace=tmp_path, roles="naughty x")
    write(tmp_path / "roles" / "naughty.toml", "[role]\nname = 'naughty'\nkind = 'boss'\n")
    with pytest.raises(RoleFileError, match=r"naughty\.toml"):
        load_config(workspace=tmp_path)


def test_workspace_role_file_overrides_shipped(tmp_path: Path) -> None:
    write(
        tmp_path / "roles" / "naughty.toml",
        "[role]\nname='naughty'\nkind='worker'\nprompt='worker.md'\n"
        "default_slot='kindergarten'\n[sampling]\nmax_tokens=7\n",
    )
    cfg = load_config(workspace=tmp_path)
    assert cfg.roles["naughty"].sampling.max_tokens == 7
    assert [s.name for s in cfg.slots_for("naughty")] == ["kindergarten"]
    assert cfg.roles["kindergarten"].sampling.max_tokens != 7


def test_prompts_render_version_and_fail_on_missing_fields(tmp_path: Path) -> None:
    write(tmp_path / "prompts" / "p.md", "Hello {name}, keep {{braces}}.")
    prompt = load_prompt(tmp_path, "p.md")
    assert prompt.render(name="x") == "Hello x, keep {braces}."
    assert len(prompt.version) == 12
    with pytest.raises(PromptError, match="name"):
        prompt.render()
    write(tmp_path / "prompts" / "p.md", "Hello {name}!")
    assert load_prompt(tmp_path, "p.md").version != prompt.version
    with pytest.raises(PromptError, match="not found"):
        load_prompt(tmp_path, "absent.md")
