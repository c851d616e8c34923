"""Every command and subcommand's ``--help`` ends with examples of that very command."""

from __future__ import annotations

import argparse

import pytest

from familiar.cli.examples import EXAMPLES, commands, example_lines
from familiar.cli.main import build_parser, main

PARSERS = commands(build_parser())


def test_every_command_is_walked() -> None:
    assert {"config", "config show", "local up", "bench", "fleet", "completion"} <= set(PARSERS)
    assert set(EXAMPLES) <= set(PARSERS)  # no examples for a command that is not there


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_each_command_has_two_or_three_examples_of_itself(name: str) -> None:
    parser = PARSERS[name]
    lines = example_lines(parser.epilog)
    assert lines, f"familiar {name} --help has no examples"
    assert len(lines) <= 3 or name == "run", lines
    if name not in ("local down",):  # one thing to show: it takes no options
        assert len(lines) >= 2, lines
    for line in lines:
        assert line == f"familiar {name}" or line.startswith(f"familiar {name} "), line
    assert parser.formatter_class is not argparse.HelpFormatter  # the lines kept as written


def test_examples_are_printed_at_the_end_of_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "--help"]) == 0
    out = capsys.readouterr().out
    tail = out[out.index("examples:") :].splitlines()
    assert tail[1:] == ["  " + line for line in EXAMPLES["fleet"]]
    assert main(["config", "show", "--help"]) == 0
    assert "  familiar config show --json\n" in capsys.readouterr().out


def test_examples_parse_as_that_command() -> None:
    """Each example (its shell comment and quoting aside) is accepted by the parser."""
    import shlex

    parser = build_parser()
    for name, lines in EXAMPLES.items():
        for line in lines:
            argv = shlex.split(line, comments=True)[1:]
            args = parser.parse_args(argv)
            assert args.func is not None, (name, line)


def test_a_long_description_is_wrapped_but_examples_are_not(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["translate", "--help"]) == 0
    out = capsys.readouterr().out
    description = out[out.index("\n\n") : out.index("positional arguments")]
    assert max(len(line) for line in description.splitlines()) <= 60
    assert "  familiar translate articles/ --to en --out en/ --nats nats://HOST:4222\n" in out
