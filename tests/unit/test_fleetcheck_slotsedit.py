"""--apply edits one slot's parallel line and nothing else, or refuses."""

from __future__ import annotations

import pytest

from familiar.errors import ConfigError
from familiar.fleetcheck.slotsedit import set_parallel

FILE = """# my fleet
[fleet]
ledger_wait_s = 30

[slots.naughty]   # the dense one
url = "http://10.0.0.10:8000/v1"
model = "gemma"
runtime = "vllm"
parallel   =  3     # tuned by hand
reserve = 1

[slots.kindergarten]
url = ["http://10.0.0.11:8000/v1",
       "http://10.0.0.12:8000/v1"]
model = "moe"
parallel = 3
"""


def _diff(a: str, b: str) -> list[tuple[str, str]]:
    return [(x, y) for x, y in zip(a.splitlines(), b.splitlines(), strict=False) if x != y]


def test_replaces_only_the_value_keeping_spacing_and_comment() -> None:
    out = set_parallel(FILE, "naughty", 12)
    assert _diff(FILE, out) == [
        ("parallel   =  3     # tuned by hand", "parallel   =  12     # tuned by hand")
    ]
    assert len(out.splitlines()) == len(FILE.splitlines())
    again = set_parallel(out, "kindergarten", 7)
    assert _diff(out, again) == [("parallel = 3", "parallel = 7")]


def test_same_value_changes_nothing() -> None:
    assert set_parallel(FILE, "naughty", 3) == FILE


def test_adds_the_line_at_the_end_of_the_table_when_absent() -> None:
    text = FILE.replace("parallel   =  3     # tuned by hand\n", "")
    out = set_parallel(text, "naughty", 5)
    lines = out.splitlines()
    assert lines[lines.index("reserve = 1") + 1] == "parallel = 5"
    assert out.replace("parallel = 5\n", "", 1) == text
    # the last table, no newline at the end of the file, indented keys
    tail = '[slots.t]\n  url = "http://h/v1"\n  model = "m"'
    assert set_parallel(tail, "t", 2) == tail + "\n  parallel = 2\n"


def test_crlf_stays_crlf() -> None:
    crlf = FILE.replace("\n", "\r\n")
    out = set_parallel(crlf, "naughty", 9)
    assert "\n" not in out.replace("\r\n", "")
    assert out == set_parallel(FILE, "naughty", 9).replace("\n", "\r\n")
    added = set_parallel(crlf.replace("parallel = 3\r\n", ""), "kindergarten", 4)
    assert added.endswith('model = "moe"\r\nparallel = 4\r\n')


def test_quoted_header_is_found() -> None:
    text = '[slots."naughty"]\nurl = "http://h/v1"\nmodel = "m"\nparallel = 1\n'
    assert set_parallel(text, "naughty", 6).endswith("parallel = 6\n")


@pytest.mark.parametrize(
    "text",
    [
        '[slots]\nnaughty = { url = "http://h/v1", model = "m", parallel = 1 }\n',
        '[slots]\nnaughty.url = "http://h/v1"\nnaughty.model = "m"\n',
        'slots.naughty.url = "http://h/v1"\nslots.naughty.model = "m"\n',
    ],
    ids=["inline table", "dotted keys under [slots]", "dotted keys at the top"],
)
def test_layouts_it_cannot_edit_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="by hand"):
        set_parallel(text, "naughty", 4, source="slots.toml")


def test_a_header_lookalike_inside_a_string_is_caught_by_the_check() -> None:
    text = (
        '[slots.a]\nurl = "http://h/v1"\nmodel = "m"\nnote = """\n[slots.naughty]\n"""\n'
        '[slots.naughty]\nurl = "http://h/v1"\nmodel = "m"\n'
    )
    with pytest.raises(ConfigError, match="by hand"):
        set_parallel(text, "naughty", 4)
