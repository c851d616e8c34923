"""A small Japanese article translated end to end on the embedded Gemma 3 270M.

The model is tiny: the test does not judge translation quality. It checks what
familiar guarantees whatever the model does: code blocks byte-identical, headings,
links and URLs kept, every chunk either translated and validated or flagged with its
source kept, the output written, and a second run served from the cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from familiar.cli.main import main
from tests.support.scripts import report_rows

pytestmark = pytest.mark.e2e

ARTICLE = """# 緑茶の淹れ方

お湯を沸かしてから、少し冷まします。詳しくは[公式サイト](https://example.com/tea)を見てください。

```python
temp = 80  # 温度は摂氏
```

## よくある失敗

熱すぎるお湯を使うと、お茶が苦くなります。
"""


def test_translate_small_article_on_embedded_gemma(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "CLAUDE.md").write_text("familiar: naughty x translator\n")
    # the workspace's own slots file: the embedded server, answers capped short so the
    # tiny model's run-ons stay cheap, and small chunks so the article makes several
    slot = (
        'url = "embedded"\nmodel = "gemma-3-270m"\nruntime = "llama.cpp"\n'
        'parallel = 4\nmax_tokens = 128\ntranslate_format = "fewshot"\n'
    )
    (tmp_path / "slots.toml").write_text(f"[slots.translator]\n{slot}[slots.naughty]\n{slot}")
    src = tmp_path / "tea.md"
    src.write_text(ARTICLE, encoding="utf-8")
    out = tmp_path / "en"
    argv = [
        "translate",
        "--workspace",
        str(tmp_path),
        str(src),
        "--to",
        "en",
        "--out",
        str(out),
        "--chunk-tokens",
        "40",
        "--json",
    ]
    code = main(argv)
    rows = report_rows(capsys.readouterr().out)
    (row,) = rows
    assert code == (0 if row["status"] == "ok" else 1)
    assert row["status"] in ("ok", "failed") and row["source_lang"] == "ja"
    text = (out / "tea.md").read_text(encoding="utf-8")
    assert "```python\ntemp = 80  # 温度は摂氏\n```" in text  # code byte for byte
    assert "](https://example.com/tea)" in text
    heads = [ln.split(" ", 1)[0] for ln in text.splitlines() if ln.startswith("#")]
    assert heads == ["#", "##"]
    assert row["chunks"] >= 2 and len(row["failed_chunks"]) < row["chunks"]
    # the second run asks the model nothing and writes the same bytes
    assert main(argv) == code
    again = report_rows(capsys.readouterr().out)[0]
    assert again["from_cache"] >= row["chunks"] - len(row["failed_chunks"]), (row, again)
    assert (out / "tea.md").read_text(encoding="utf-8") == text
