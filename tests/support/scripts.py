"""Handler-level scripting for flow tests: reply = f(request), never arrival order.

A FIFO of scripted replies breaks as soon as two workers run at once; a handler looks
at what is asked (pattern: pydantic-ai ``models/function.py``). :class:`SessionScript`
answers a session's plan, worker and integration requests by their JSON-schema name
and the subtask id in the prompt. Shared fixtures and builders of the session and
translation tests live here too, so test modules never import each other.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from familiar.cli.main import main

REPO = Path(__file__).resolve().parents[2]

# -- sessions ----------------------------------------------------------------------------

PLAN: dict[str, Any] = {
    "goal": "A tea guide",
    "decisions": ["Call the drink 'sencha'", "Use metric units"],
    "subtasks": [
        {
            "id": "s1",
            "title": "Steps",
            "instructions": "List the steps",
            "acceptance": "5 steps",
            "depends_on": [],
            "difficulty": "hard",
        },
        {
            "id": "s2",
            "title": "Mistakes",
            "instructions": "List mistakes",
            "acceptance": "3",
            "depends_on": [],
            "difficulty": "easy",
        },
        {
            "id": "s3",
            "title": "Summary",
            "instructions": "Summarise s1 and s2",
            "acceptance": "2 lines",
            "depends_on": ["s1", "s2"],
            "difficulty": "easy",
        },
    ],
}


def work(text: str) -> str:
    return json.dumps({"output": text, "decisions_kept": ["Call the drink 'sencha'"], "notes": ""})


def integration(text: str, violations: list[dict[str, str]] | None = None) -> str:
    return json.dumps({"deliverable": text, "violations": violations or []})


_SUBTASK = re.compile(r"Your subtask \((s\d+)\)")


def schema_name(body: Mapping[str, Any]) -> str | None:
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("json_schema"), dict):
        name = fmt["json_schema"].get("name")
        return name if isinstance(name, str) else None
    return None


def last_user(body: Mapping[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return str(body.get("prompt") or "")


_JA_CHAR = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")


def echo_translated(body: Mapping[str, Any]) -> str | None:
    """The fake server's echo reply as a translation into English: ``"echo: "`` + the chat
    text with every kana and kanji made an ``x`` (an answer left in Japanese is refused);
    None (the server's own reply) for completions and JSON-schema requests."""
    if body.get("response_format") or not body.get("messages"):
        return None
    return "echo: " + _JA_CHAR.sub("x", last_user(body))[:200]


@dataclass
class SessionScript:
    """Answers a session by what each request asks: the plan, each subtask's work (by
    its id, whatever order the workers run in), the integration."""

    plan: Mapping[str, Any]
    outputs: Mapping[str, str]
    deliverable: str
    asked: list[str] = field(default_factory=list)

    def __call__(self, body: dict[str, Any]) -> str | None:
        name = schema_name(body)
        if name == "plan":
            self.asked.append("plan")
            return json.dumps(self.plan)
        if name == "work":
            found = _SUBTASK.search(last_user(body))
            if found is None:
                return None
            self.asked.append(found.group(1))
            return work(self.outputs[found.group(1)])
        if name == "integration":
            self.asked.append("integration")
            return integration(self.deliverable)
        return None


def write_fleet(ws: Path, servers: Mapping[str, Any], extra: str) -> None:
    """One slot per fake server (``parallel = 1``) plus ``extra`` lines in each."""
    (ws / "slots.toml").write_text(
        "".join(
            f'[slots.{name}]\nurl = "{s.url}"\nmodel = "{name}-m"\nruntime = "vllm"\n'
            f"parallel = 1\n{extra}"
            for name, s in servers.items()
        )
    )


# -- translation -------------------------------------------------------------------------

ARTICLE = """---
title: 緑茶の淹れ方
tags: [tea, guide]
date: 2026-11-27
---

# 緑茶の淹れ方

お湯を沸かして、少し冷ましてから茶葉に注ぎます。詳しくは[公式サイト](https://example.com/tea?x=1)を見てください。

```python
# 温度を確認する
temp = 80  # 摂氏
print("お茶")
```

| 項目 | 値 |
|:---|---:|
| 温度 | 80度 |
| 時間 | 1分 |

- 茶葉は `3g` 使います。
  - 急須を温めておきます。

> 熱すぎるお湯は苦味の原因になります。
"""


def articles(root: Path, n: int = 3, text: str = ARTICLE) -> Path:
    src = root / "src"
    for i in range(n):
        sub = src / ("deep" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"a{i}.md").write_text(text.replace("緑茶", f"緑茶{i}"), encoding="utf-8")
    return src


async def translate(tmp_path: Path, *args: str) -> int:
    argv = ["translate", "--workspace", str(tmp_path), "--to", "en", *args]
    return int(await asyncio.to_thread(main, argv))


def report(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return report_rows(capsys.readouterr().out)


def report_rows(stdout: str) -> list[dict[str, Any]]:
    """The article rows of ``translate --json`` (version 2: an object with the batch's
    correlation id, its totals and the rows under ``articles``)."""
    data = json.loads(stdout)
    assert isinstance(data, dict) and data["version"] == 2, data
    assert isinstance(data["correlation_id"], str) and len(data["correlation_id"]) == 32
    rows: list[dict[str, Any]] = data["articles"]
    assert data["totals"]["articles"] == len(rows)
    return rows
