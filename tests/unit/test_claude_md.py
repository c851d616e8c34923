"""Tests for familiar.config.claude_md: reading and rewriting the ``familiar:`` line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from familiar.config.claude_md import find_workspace, read_role_line, write_role_line
from familiar.errors import StateError


def make(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "CLAUDE.md"
    path.write_bytes(data)
    return path


def rewrite(tmp_path: Path, before: bytes, value: str) -> bytes:
    path = make(tmp_path, before)
    write_role_line(path, value)
    assert read_role_line(path) == value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CLAUDE.md"]
    return path.read_bytes()


# --- find_workspace ------------------------------------------------------------------------


def test_find_workspace_walks_up(tmp_path: Path) -> None:
    (tmp_path / "CLAUDE.md").write_text("x\n")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_workspace(deep) == tmp_path.resolve()
    assert find_workspace(tmp_path) == tmp_path.resolve()


def test_find_workspace_nearest_wins(tmp_path: Path) -> None:
    (tmp_path / "CLAUDE.md").write_text("outer\n")
    inner = tmp_path / "inner"
    (inner / "sub").mkdir(parents=True)
    (inner / "CLAUDE.md").write_text("inner\n")
    assert find_workspace(inner / "sub") == inner.resolve()


def test_find_workspace_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "CLAUDE.md").write_text("x\n")
    (tmp_path / "notes.txt").write_text("x\n")
    assert find_workspace(tmp_path / "notes.txt") == tmp_path.resolve()


def test_find_workspace_defaults_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "CLAUDE.md").write_text("x\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert find_workspace() == tmp_path.resolve()


def test_find_workspace_ignores_directory_named_claude_md(tmp_path: Path) -> None:
    (tmp_path / "CLAUDE.md").mkdir()
    found = find_workspace(tmp_path)
    assert found is None or found != tmp_path.resolve()


# --- read_role_line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"# hi\nfamiliar: naughty x translator\n", "naughty x translator"),
        (b"familiar:naughty", "naughty"),
        (b"familiar:   full   \r\n", "full"),
        (b"familiar:\n", ""),
        (b"\xef\xbb\xbffamiliar: minimal\r\n", "minimal"),
        (b"familiar: a\nfamiliar: b\n", "a"),
        (b"# nothing here\n", None),
        (b"", None),
        (b" familiar: indented\n", None),
        (b"Familiar: wrong case\n", None),
        (b"```\nfamiliar: fenced\n```\nfamiliar: real\n", "real"),
        (b"~~~md\nfamiliar: fenced\n~~~\n", None),
        (b"````\n```\nfamiliar: fenced\n````\nfamiliar: real\n", "real"),
        (b"```\nfamiliar: fenced\n", None),
    ],
)
def test_read_role_line(tmp_path: Path, data: bytes, expected: str | None) -> None:
    assert read_role_line(make(tmp_path, data)) == expected


def test_read_missing_file(tmp_path: Path) -> None:
    assert read_role_line(tmp_path / "CLAUDE.md") is None


# --- write_role_line: replacing ------------------------------------------------------------


def test_replace_in_middle_lf(tmp_path: Path) -> None:
    before = b"# Project\n\nfamiliar: minimal\n\nMore text.\n"
    after = rewrite(tmp_path, before, "naughty x kindergarten@fast x translator")
    expected = b"# Project\n\nfamiliar: naughty x kindergarten@fast x translator\n\nMore text.\n"
    assert after == expected


def test_replace_crlf_file(tmp_path: Path) -> None:
    before = b"# Project\r\nfamiliar: minimal\r\ntail\r\n"
    assert rewrite(tmp_path, before, "full") == b"# Project\r\nfamiliar: full\r\ntail\r\n"


def test_replace_keeps_the_line_own_ending_in_mixed_file(tmp_path: Path) -> None:
    before = b"a\r\nfamiliar: minimal\nb\r\n"
    assert rewrite(tmp_path, before, "full") == b"a\r\nfamiliar: full\nb\r\n"


def test_replace_last_line_without_final_newline(tmp_path: Path) -> None:
    before = b"# P\nfamiliar: minimal"
    assert rewrite(tmp_path, before, "standard") == b"# P\nfamiliar: standard"


def test_replace_keeps_bom(tmp_path: Path) -> None:
    before = b"\xef\xbb\xbf# P\nfamiliar: minimal\n"
    assert rewrite(tmp_path, before, "full") == b"\xef\xbb\xbf# P\nfamiliar: full\n"


def test_replace_keeps_spacing_around_value(tmp_path: Path) -> None:
    assert rewrite(tmp_path, b"familiar:\t minimal  \n", "full") == b"familiar:\t full  \n"
    assert rewrite(tmp_path, b"familiar:minimal\n", "full") == b"familiar:full\n"
    assert rewrite(tmp_path, b"familiar:\n", "full") == b"familiar: full\n"


def test_replace_ignores_fenced_line(tmp_path: Path) -> None:
    before = (
        "# Caf\u00e9 \u2603\n```text\nfamiliar: example x only\n```\nfamiliar: minimal\nend\n"
    ).encode()
    after = rewrite(tmp_path, before, "full")
    assert after == before.replace(b"familiar: minimal", b"familiar: full")
    assert b"familiar: example x only" in after


def test_replace_only_first_line(tmp_path: Path) -> None:
    before = b"familiar: a\nfamiliar: b\n"
    assert rewrite(tmp_path, before, "c") == b"familiar: c\nfamiliar: b\n"


def test_non_utf8_bytes_elsewhere_are_preserved(tmp_path: Path) -> None:
    before = b"caf\xe9 latin-1 junk\nfamiliar: minimal\n\xff\n"
    assert rewrite(tmp_path, before, "full") == b"caf\xe9 latin-1 junk\nfamiliar: full\n\xff\n"


def test_unicode_value(tmp_path: Path) -> None:
    after = rewrite(tmp_path, b"familiar: minimal\n", "naughty \u00d7 translator")
    assert after == "familiar: naughty \u00d7 translator\n".encode()


# --- write_role_line: appending and creating -----------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"# P\n", b"# P\nfamiliar: full\n"),
        (b"# P", b"# P\nfamiliar: full\n"),
        (b"# P\r\nx\r\n", b"# P\r\nx\r\nfamiliar: full\r\n"),
        (b"# P\r\nx", b"# P\r\nx\r\nfamiliar: full\r\n"),
        (b"a\r\nb\nc\n", b"a\r\nb\nc\nfamiliar: full\n"),
        (b"", b"familiar: full\n"),
        (b"\xef\xbb\xbf", b"\xef\xbb\xbffamiliar: full\n"),
        (b"```\nfamiliar: x\n```\n", b"```\nfamiliar: x\n```\nfamiliar: full\n"),
        (b"```\nfamiliar: x\n", b"```\nfamiliar: x\n```\nfamiliar: full\n"),
        (b" familiar: indented\n", b" familiar: indented\nfamiliar: full\n"),
    ],
)
def test_append_when_missing(tmp_path: Path, before: bytes, after: bytes) -> None:
    assert rewrite(tmp_path, before, "full") == after


def test_create_when_absent(tmp_path: Path) -> None:
    path = tmp_path / "CLAUDE.md"
    write_role_line(path, "minimal")
    assert path.read_bytes() == b"# CLAUDE.md\n\nfamiliar: minimal\n"
    assert read_role_line(path) == "minimal"
    assert find_workspace(tmp_path) == tmp_path.resolve()


def test_rejects_multiline_value(tmp_path: Path) -> None:
    path = make(tmp_path, b"familiar: minimal\n")
    for bad in ("full\nevil", "full\r", "a\r\nb"):
        with pytest.raises(ValueError, match="single line"):
            write_role_line(path, bad)
    assert path.read_bytes() == b"familiar: minimal\n"


# --- atomicity and metadata ----------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664, 0o444])
def test_mode_preserved(tmp_path: Path, mode: int) -> None:
    path = make(tmp_path, b"familiar: minimal\n")
    path.chmod(mode)
    write_role_line(path, "full")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert read_role_line(path) == "full"


def test_write_through_symlink(tmp_path: Path) -> None:
    real = make(tmp_path, b"familiar: minimal\n")
    (tmp_path / "link").mkdir()
    link = tmp_path / "link" / "CLAUDE.md"
    link.symlink_to(real)
    write_role_line(link, "full")
    assert link.is_symlink()
    assert real.read_bytes() == b"familiar: full\n"


def test_failed_replace_leaves_original_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = b"# P\r\nfamiliar: minimal\r\n"
    path = make(tmp_path, before)

    def boom(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StateError, match="disk on fire"):
        write_role_line(path, "full")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CLAUDE.md"]


def test_failed_fsync_leaves_original_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = b"familiar: minimal\n"
    path = make(tmp_path, before)

    def boom(fd: int) -> None:
        raise OSError("fsync failed")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(StateError, match="fsync failed"):
        write_role_line(path, "full")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CLAUDE.md"]


def test_failed_create_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(src: str, dst: str) -> None:
        raise OSError("nope")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StateError, match="nope"):
        write_role_line(tmp_path / "CLAUDE.md", "full")
    assert list(tmp_path.iterdir()) == []
