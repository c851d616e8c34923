"""What chat models do to a translation, through `familiar translate`: a preamble, a closing
remark, a fence around the answer, an answer left in the source language. Retried with the
reason, then flagged (the source kept), never ok."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_openai import FakeOpenAIServer
from tests.support.scripts import ARTICLE, articles, echo_translated, last_user, report, translate

WRAPS = {
    "preamble": "Sure! Here is the translation: {}",
    "paragraph": "Sure! Here is the translation:\n\n{}",
    "closing": "{}\n\nI hope this helps! Let me know if you need anything else.",
    "fence": "```markdown\n{}\n```",
}


def wrapped(wrap: str, *, always: bool) -> Any:
    def handler(body: dict[str, Any]) -> str | None:
        clean = echo_translated(body)
        if clean is None or (body.get("temperature") and not always):
            return clean
        return wrap.format(clean)

    return handler


@pytest.mark.parametrize("kind", sorted(WRAPS))
async def test_a_wrapped_answer_is_asked_again_with_the_reason(
    kind: str, tmp_path: Path, translator: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    translator.handler = wrapped(WRAPS[kind], always=False)
    src, out = articles(tmp_path, 1), tmp_path / "o"
    assert await translate(tmp_path, str(src), "--out", str(out), "--json") == 0
    (row,) = report(capsys)
    assert row["status"] == "ok" and row["retried"] == row["chunks"]  # every chunk once more
    text = (out / "a0.md").read_text(encoding="utf-8")
    assert "Sure" not in text and "hope" not in text and "```markdown" not in text
    assert text.startswith('---\ntitle: "echo: xx')  # the front matter title too
    retries = [r["body"] for r in translator.requests if r["body"].get("temperature")]
    assert retries
    assert all("previous answer was refused" in b["messages"][0]["content"] for b in retries)


async def test_an_answer_that_stays_wrapped_is_flagged_and_the_source_kept(
    tmp_path: Path, translator: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    translator.handler = wrapped(WRAPS["preamble"], always=True)
    src, out = articles(tmp_path, 1), tmp_path / "o"
    assert await translate(tmp_path, str(src), "--out", str(out), "--json") == 1
    (row,) = report(capsys)
    assert row["status"] == "failed" and len(row["failed_chunks"]) == row["chunks"]
    text = (out / "a0.md").read_text(encoding="utf-8")
    assert "Sure" not in text and text == ARTICLE.replace("緑茶", "緑茶0")


async def test_an_answer_left_in_the_source_language_is_flagged(
    tmp_path: Path, translator: FakeOpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    def half_done(body: dict[str, Any]) -> str | None:
        text = last_user(body)
        if "沸かして" in text:  # this paragraph comes back untouched but for one word
            return text.replace("お湯", "water")
        return re.sub("[\u3040-\u30ff\u4e00-\u9fff]", "x", text)  # the rest translated

    translator.handler = half_done
    src, out = articles(tmp_path, 1), tmp_path / "o"
    args = ("--out", str(out), "--json", "--chunk-tokens", "32")
    assert await translate(tmp_path, str(src), *args) == 1
    (row,) = report(capsys)
    assert row["status"] == "failed" and len(row["failed_chunks"]) == 1
    text = (out / "a0.md").read_text(encoding="utf-8")
    assert "お湯を沸かして" in text and "water" not in text  # the source kept, flagged
    assert "| xx | 80x |" in text and "- xxx `3g` xxxx" in text  # the rest translated
