"""Integrity of `familiar translate`: outputs never land on sources, per-article failures
stay per article, the plain report is whole, unfinished answers are never kept."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from familiar.translate.cache import ChunkCache
from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import ARTICLE, articles, report, translate


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for directories)."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in root.rglob("*")
    }


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("familiar: error:") and "Traceback" not in err
    return lines[0]


# -- 1. outputs never land on sources -----------------------------------------------------


async def test_out_equal_to_or_inside_the_input_dir_is_a_usage_error(
    tmp_path: Path, translator: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    src = articles(tmp_path, 3)
    before = snapshot(src)
    assert await translate(tmp_path, str(src), "--out", str(src)) == 2
    assert "is the input directory" in one_error_line(capsys.readouterr().err)
    assert await translate(tmp_path, str(src), "--out", str(src / "en")) == 2
    assert "inside the input directory" in one_error_line(capsys.readouterr().err)
    assert await translate(tmp_path, str(src), "--out", str(src / "deep" / "en" / "x")) == 2
    one_error_line(capsys.readouterr().err)
    assert snapshot(src) == before  # nothing written, no out dir created
    assert translator.stats["requests"] == 0


async def test_an_output_path_that_is_a_source_file_is_a_usage_error(
    tmp_path: Path, translator: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    src = articles(tmp_path, 3)
    before = snapshot(src)
    # a single file, --out its own directory: the translation would replace it
    assert await translate(tmp_path, str(src / "a0.md"), "--out", str(src)) == 2
    assert "overwrite the source" in one_error_line(capsys.readouterr().err)
    # an output tree whose entries link back to the sources (symlink, hard link)
    out = tmp_path / "out"
    (out / "deep").mkdir(parents=True)
    (out / "a0.md").symlink_to(src / "a0.md")
    assert await translate(tmp_path, str(src), "--out", str(out)) == 2
    assert "overwrite the source" in one_error_line(capsys.readouterr().err)
    (out / "a0.md").unlink()
    os.link(src / "deep" / "a1.md", out / "deep" / "a1.md")
    assert await translate(tmp_path, str(src), "--out", str(out)) == 2
    assert "a1.md" in one_error_line(capsys.readouterr().err)
    # an output dir that is an input dir under another name
    (tmp_path / "alias").symlink_to(src, target_is_directory=True)
    assert await translate(tmp_path, str(src), "--out", str(tmp_path / "alias")) == 2
    one_error_line(capsys.readouterr().err)
    assert snapshot(src) == before
    assert translator.stats["requests"] == 0


async def test_default_output_and_hidden_dirs_are_never_input(
    tmp_path: Path,
    translator: FakeOpenAIServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = articles(tmp_path, 2)
    for hidden in (".git", ".familiar", "deep/.cache"):
        (src / hidden).mkdir(parents=True, exist_ok=True)
        (src / hidden / "secret.md").write_text(ARTICLE, encoding="utf-8")
    monkeypatch.chdir(src)  # ./translated-en lies inside the input directory
    for _ in range(3):
        assert await translate(tmp_path, ".", "--json") == 0
        rows = report(capsys)
        assert sorted(Path(str(r["path"])).as_posix() for r in rows) == ["a0.md", "deep/a1.md"]
    written = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.md"))
    assert written == [
        ".familiar/secret.md",
        ".git/secret.md",
        "a0.md",
        "deep/.cache/secret.md",
        "deep/a1.md",
        "translated-en/a0.md",
        "translated-en/deep/a1.md",
    ]


async def test_two_articles_to_one_output_path_is_a_usage_error(
    tmp_path: Path, translator: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.md").write_text(ARTICLE, encoding="utf-8")
    out = tmp_path / "out"
    assert (
        await translate(tmp_path, str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(out)) == 2
    )
    assert "both be written" in one_error_line(capsys.readouterr().err)
    assert not out.exists()


# -- 2. per-article write failures ----------------------------------------------------------


async def test_unwritable_outputs_are_errors_of_their_article_only(
    tmp_path: Path, translator: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    src = articles(tmp_path, 4)  # a0.md, deep/a1.md, a2.md, deep/a3.md
    out = tmp_path / "out"
    (out / "a0.md").mkdir(parents=True)  # a directory in the way
    (out / "deep").write_text("a file where a folder should be")
    assert await translate(tmp_path, str(src), "--out", str(out), "--json") == 1
    rows = {Path(str(r["path"])).relative_to(src).as_posix(): r for r in report(capsys)}
    assert rows["a0.md"]["status"] == "error"
    assert str(out / "a0.md") in str(rows["a0.md"]["error"])
    for name in ("deep/a1.md", "deep/a3.md"):
        assert rows[name]["status"] == "error" and str(out / name) in str(rows[name]["error"])
    assert rows["a2.md"]["status"] == "ok"
    assert (out / "a2.md").read_text(encoding="utf-8").startswith("---\n")
    for r in rows.values():
        assert "\n" not in str(r["error"] or "")


async def test_read_only_output_folder_is_an_article_error(
    tmp_path: Path,
    translator: FakeOpenAIServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = articles(tmp_path, 2)
    out = tmp_path / "out"
    (out / "deep").mkdir(parents=True)
    real_mkstemp = tempfile.mkstemp

    def read_only(*args: Any, **kwargs: Any) -> Any:  # what a non-root user meets in a
        if Path(str(kwargs.get("dir"))) == out / "deep":  # 0555 folder (root bypasses it)
            raise PermissionError(13, "Permission denied", str(out / "deep"))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert await translate(tmp_path, str(src), "--out", str(out), "--json") == 1
    rows = {Path(str(r["path"])).name: r for r in report(capsys)}
    assert rows["a0.md"]["status"] == "ok"
    assert rows["a1.md"]["status"] == "error"
    assert str(out / "deep" / "a1.md") in str(rows["a1.md"]["error"])
    assert "Permission denied" in str(rows["a1.md"]["error"])


# -- 4. the plain report is whole ---------------------------------------------------------------


async def test_plain_report_keeps_long_paths_and_errors_whole(
    tmp_path: Path, translator: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / "src" / ("a-rather-long-folder-name-" * 3) / ("and-another-one-" * 3)
    deep.mkdir(parents=True)
    (deep / "ok-article-with-a-long-name.md").write_text(ARTICLE, encoding="utf-8")
    (deep / "blocked-article-with-a-long-name.md").write_text(ARTICLE, encoding="utf-8")
    (deep / "sjis.md").write_bytes("# 日本語\n\nシフトJISです。\n".encode("shift_jis"))
    out = tmp_path / ("an-output-folder-with-a-long-name-" * 2)
    rel = deep.relative_to(tmp_path / "src")
    (out / rel / "blocked-article-with-a-long-name.md").mkdir(parents=True)
    assert await translate(tmp_path, str(tmp_path / "src"), "--out", str(out)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines  # one plain line per article, no table
    by_name = {Path(ln.split("\t")[0]).name: ln for ln in lines}
    blocked = by_name["blocked-article-with-a-long-name.md"]
    path = str(deep / "blocked-article-with-a-long-name.md")
    target = str(out / rel / "blocked-article-with-a-long-name.md")
    assert len(path) > 120 and len(target) > 120
    assert blocked.startswith(path + "\terror\t")
    assert f"cannot write {target}: " in blocked
    assert by_name["sjis.md"].split("\t")[-1] == (
        "not UTF-8 (looks like SHIFT-JIS; convert it to UTF-8)"
    )
    ok = by_name["ok-article-with-a-long-name.md"]
    assert "\tok\t" in ok and ok.endswith(str(out / rel / "ok-article-with-a-long-name.md"))


# -- 7. unfinished answers are problems, never results --------------------------------------


@pytest.mark.parametrize("finish", ["length", "content_filter"])
async def test_unfinished_answers_are_never_written_or_cached(
    tmp_path: Path,
    translator: FakeOpenAIServer,
    capsys: pytest.CaptureFixture[str],
    isolated_env: Path,
    finish: str,
) -> None:
    para = "お茶を飲みます。昨日は雨でした。明日は晴れるでしょう。"
    (tmp_path / "p.md").write_text(para + "\n", encoding="utf-8")
    answer = "I drink tea. It rained yesterday. It will be sunny tomorrow."
    translator.add_faults([{"kind": "reply", "text": answer, "finish_reason": finish}] * 40)
    out = tmp_path / "o"
    assert await translate(tmp_path, str(tmp_path / "p.md"), "--out", str(out), "--json") == 1
    (row,) = report(capsys)
    assert row["status"] == "failed" and row["failed_chunks"] == [0]
    written = (out / "p.md").read_text(encoding="utf-8")
    assert para in written and "sunny" not in written
    cache = ChunkCache(isolated_env / "cache" / "chunks.sqlite")
    try:
        assert len(cache) == 0
    finally:
        cache.close()


# -- a base model copying the few-shot example is not a translation -------------------------


async def test_fewshot_answer_copying_an_example_is_rejected(
    tmp_path: Path, translator: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from familiar.translate.formats import FEWSHOT_EXAMPLES

    copy = FEWSHOT_EXAMPLES[("ja", "en")][0][1]  # "⟦P0⟧The history of Zorblats"
    (tmp_path / "a.md").write_text("# 自転車のタイヤ\n", encoding="utf-8")
    translator.add_replies([copy] * 20)
    out = tmp_path / "o"
    code = await translate(
        tmp_path, str(tmp_path / "a.md"), "--format", "fewshot", "--out", str(out), "--json"
    )
    assert code == 1
    (row,) = report(capsys)
    assert row["status"] == "failed" and row["failed_chunks"] == [0]
    assert (out / "a.md").read_text(encoding="utf-8") == "# 自転車のタイヤ\n"  # source kept
    assert all(r["path"] == "/v1/completions" for r in translator.requests)


# -- modes: what plain open() gives; a rewritten file keeps its own -------------------------


async def test_outputs_get_the_umask_mode_and_in_place_keeps_the_source_mode(
    tmp_path: Path, translator: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    src = articles(tmp_path, 2)
    (src / "a0.md").chmod(0o640)
    old = os.umask(0o022)
    try:
        assert await translate(tmp_path, str(src), "--out", str(tmp_path / "o"), "--json") == 0
        assert (tmp_path / "o" / "a0.md").stat().st_mode & 0o777 == 0o644
        assert await translate(tmp_path, str(src / "a0.md"), "--in-place", "--json") == 0
        assert (src / "a0.md").stat().st_mode & 0o777 == 0o640  # not 0600, not 0644
        assert "echo: " in (src / "a0.md").read_text(encoding="utf-8")  # really rewritten
    finally:
        os.umask(old)
    capsys.readouterr()
