"""The conventions a command line is expected to keep, checked on the parser and in-process.

``--json`` documented wherever it is offered; global options before or after the command,
validated (exit 2, one line); ``-q``/``-v``; the environment variables in ``--help``; NO_COLOR;
the package's public names lazy and sorted; one version; the licence and the metadata.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import familiar
from familiar import logs
from familiar.cli import main as cli
from familiar.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def keep_logging_config() -> Iterator[None]:
    """main() and configure() set structlog up for the whole process: put it back."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def command_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under ``parser`` with its command path; leaves and groups alike."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_parsers(sub, (*path, name))


def is_leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return parser._option_string_actions.get(flag)


# --- --json ------------------------------------------------------------------------------------


OFFERING_JSON = {
    "config show",
    "local status",
    "run",
    "telemetry status",
    "telemetry flush",
    "sessions",
    "translate",
    "fleet",
    "health",
    "bench",
}


def test_every_json_option_is_documented() -> None:
    helps = {}
    for path, parser in command_parsers(cli.build_parser()):
        action = option(parser, "--json")
        if action is not None:
            helps[" ".join(path)] = action.help or ""
            assert action.help, f"familiar {' '.join(path)} --json has no help"
    assert set(helps) >= OFFERING_JSON
    for command in OFFERING_JSON:
        assert "JSON" in helps[command] and "stdout" in helps[command], command


# --- global options ---------------------------------------------------------------------------


def test_every_command_accepts_the_global_options_after_it() -> None:
    parser = cli.build_parser()
    leaves = [(p, sub) for p, sub in command_parsers(parser) if p and is_leaf(sub)]
    assert len(leaves) >= 10
    for path, sub in leaves:
        for flag in ("--log-level", "-v", "-q"):
            assert option(sub, flag) is not None, f"familiar {' '.join(path)} {flag}"


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["config", "validate"], None),
        (["-v", "config", "validate"], "info"),
        (["config", "validate", "-v"], "info"),
        (["config", "validate", "-vv"], "debug"),
        (["-v", "config", "validate", "-v"], "debug"),
        (["config", "validate", "-vvvv"], "debug"),
        (["-q", "config", "validate"], "error"),
        (["config", "validate", "--quiet"], "error"),
        (["config", "validate", "-q", "-v"], None),
        (["--log-level", "info", "config", "validate"], "info"),
        (["config", "validate", "--log-level", "DEBUG"], "debug"),
        (["--log-level", "error", "config", "validate", "--log-level", "debug"], "debug"),
        (["--log-level", "error", "config", "validate", "-vv"], "error"),
        (["config", "-q", "validate"], "error"),
    ],
)
def test_global_options_before_or_after_the_command(argv: list[str], level: str | None) -> None:
    assert cli._level(cli.build_parser().parse_args(argv)) == level


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "bogus", "config", "validate"],
        ["config", "validate", "--log-level", "bogus"],
        ["config", "validate", "--log-level"],
        ["nonsense"],
        [],
        ["run", "--max-subtasks", "many"],
        ["local", "up", "--seats", "0"],
    ],
)
def test_usage_mistakes_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("familiar: error: "), err
    assert "--help" in lines[0]


def test_a_bad_log_level_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "validate", "--log-level", "loud"]) == 2
    err = capsys.readouterr().err
    assert "'loud'" in err and "debug, info, warning, error" in err


def test_a_bad_log_level_in_the_environment_is_a_config_mistake(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAMILIAR_LOG_LEVEL", "chatty")
    assert cli.main(["config", "validate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("familiar: error: FAMILIAR_LOG_LEVEL: 'chatty'") and err.count("\n") == 1
    with pytest.raises(ConfigError):
        logs.configure()
    logs.configure("info")  # an explicit level wins over the environment


def test_version_and_help_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"familiar {familiar.__version__}\n"
    assert cli.main(["-q", "--version"]) == 0
    assert capsys.readouterr().out == f"familiar {familiar.__version__}\n"
    assert cli.main(["--help"]) == 0
    assert "environment:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "asks"),
    [
        (["--version"], True),
        (["-q", "--version"], True),
        (["run", "--version"], False),
        (["--log-level", "debug", "--version"], False),  # argparse checks the level first
        (["--", "--version"], False),
        ([], False),
    ],
)
def test_version_fast_path_only_before_the_command(argv: list[str], asks: bool) -> None:
    assert cli._asks_version(argv) is asks


# --- environment variables --------------------------------------------------------------------


def test_help_lists_every_environment_variable_the_code_reads() -> None:
    read = set()
    for path in (ROOT / "familiar").rglob("*.py"):
        read |= set(re.findall(r"\bFAMILIAR_[A-Z][A-Z_]*[A-Z]\b", path.read_text("utf-8")))
    listed = {name for name, _ in cli.ENVIRONMENT}
    required = {
        "FAMILIAR_HOME",
        "FAMILIAR_SLOTS",
        "FAMILIAR_TELEMETRY",
        "FAMILIAR_DEBUG",
        "FAMILIAR_LEDGER_DIR",
        "FAMILIAR_NATS_URL",
    }
    assert required <= read
    assert read <= listed, f"read but not in familiar --help: {sorted(read - listed)}"
    assert "NO_COLOR" in listed
    text = cli.build_parser().format_help()
    for name in listed:
        assert re.search(rf"^  {name}\s+\S", text, re.MULTILINE), name


# --- colour -----------------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "tty", "colour"),
    [
        ({}, True, True),
        ({}, False, False),
        ({"NO_COLOR": "1"}, True, False),
        ({"NO_COLOR": ""}, True, True),  # no-color.org: set and not empty
        ({"TERM": "dumb"}, True, False),
        ({"FORCE_COLOR": "1"}, False, True),
        ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, True, False),
    ],
)
def test_use_colour(env: dict[str, str], tty: bool, colour: bool) -> None:
    stream = FakeTerminal() if tty else io.StringIO()
    assert logs.use_colour(stream, env) is colour


def test_log_lines_on_a_terminal_follow_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    import structlog

    def warn_on_terminal() -> str:
        terminal = FakeTerminal()
        monkeypatch.setattr("sys.stderr", terminal)
        logs.configure("warning")
        structlog.get_logger("t").warning("replica cooling down", slot="s")
        return terminal.getvalue()

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert "\x1b[" in warn_on_terminal()
    monkeypatch.setenv("NO_COLOR", "1")
    plain = warn_on_terminal()
    assert "replica cooling down" in plain and "\x1b[" not in plain


# --- the package ------------------------------------------------------------------------------


def isort_style(name: str) -> tuple[int, str]:
    """The order ruff keeps ``__all__`` in (RUF022): CONSTANTS, Classes, then the rest."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_public_names_are_sorted_and_all_resolve() -> None:
    assert familiar.__all__ == sorted(familiar.__all__, key=isort_style)
    assert len(set(familiar.__all__)) == len(familiar.__all__)
    for name in familiar.__all__:
        assert getattr(familiar, name) is not None, name
        assert name in dir(familiar)
    from familiar import Fleet, SlotClient, parse_role_string  # the old spelling still works

    assert SlotClient.__module__ == "familiar.client.backend" and Fleet.__name__ == "Fleet"
    assert parse_role_string("minimal").canonical()
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        familiar.Nope  # noqa: B018


def test_version_is_written_once() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "familiar.__version__"}
    assert importlib.metadata.version("familiar") == familiar.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", familiar.__version__)


def test_licence_and_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n")
    assert "Copyright (c) 2026 familiar contributors" in licence
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    classifiers = project["classifiers"]
    assert classifiers == sorted(classifiers)
    assert not [c for c in classifiers if c.startswith("License ::")], "PEP 639: no both"
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    minimum = project["requires-python"].removeprefix(">=")
    assert f"Programming Language :: Python :: {minimum}" in classifiers
