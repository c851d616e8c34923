"""A workspace session end to end on the embedded Gemma 3 270M: ``--context`` on a
two-file package, ``--out``, ``--check``. The tiny base model may write nothing useful;
what must hold is the mechanics: the context recorded, the check run (the user's own
command) and recorded, files only inside the output tree, the workspace untouched, an
honest status."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from familiar.cli.main import main

pytestmark = pytest.mark.e2e


def test_workspace_session_on_embedded_gemma(
    tmp_path: Path, isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "CLAUDE.md").write_text("familiar: naughty x kindergarten\n")
    (tmp_path / "roles").mkdir()
    (tmp_path / "roles" / "naughty.toml").write_text(
        '[role]\nname = "naughty"\nkind = "worker"\nprompt = "naughty.md"\n'
        'default_slot = "naughty"\n[sampling]\ntemperature = 0.0\nmax_tokens = 512\n'
    )
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.util import slug\n")
    (pkg / "util.py").write_text('def slug(text):\n    return text.lower().replace(" ", "-")\n')
    before = {p: p.read_bytes() for p in pkg.iterdir()}
    out = tmp_path / "out"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = main(
            [
                "run",
                "--workspace",
                str(tmp_path),
                "Add a function title(text) to pkg/util.py that capitalises each word.",
                "--context",
                "pkg",
                "--out",
                str(out),
                "--check",
                f"{sys.executable} -c 'import pkg'",
                "--check-timeout",
                "60",
                "--json",
            ]
        )
    finally:
        os.chdir(cwd)
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err
    assert "Traceback" not in captured.err
    assert "context: 2 file(s)" in captured.err
    (d,) = (isolated_env / "sessions").iterdir()
    context = json.loads((d / "context.json").read_text())
    assert sorted(f["path"] for f in context["files"]) == ["pkg/__init__.py", "pkg/util.py"]
    assert {p: p.read_bytes() for p in pkg.iterdir()} == before  # never touched
    state = json.loads((d / "session.json").read_text())
    if code == 0:
        assert state["status"] == "done"
        assert (out / "result.md").is_file()
        runs = [json.loads(p.read_text()) for p in sorted((d / "checks").glob("*.json"))]
        assert runs and runs[-1]["passed"] is True
        for f in json.loads((d / "files.json").read_text())["files"]:
            assert (out / f["path"]).is_file()
            assert (out / f["path"]).resolve().is_relative_to(out.resolve())
    else:
        assert state["status"] == "failed" and (state.get("error") or state.get("failed"))
