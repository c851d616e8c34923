"""Which workspace files a session sees: .gitignore, hidden, secrets, binaries, links,
special files, the budget; and which paths a model may write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from familiar.errors import ConfigError
from familiar.session.context import gather, task_front_matter
from familiar.session.files import FileOut, merge, refused


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src" / "deep").mkdir(parents=True)
    (root / "src" / "a.py").write_text("A = 1\n")
    (root / "src" / "deep" / "b.py").write_text("B = 2\n")
    (root / "src" / "deep" / "gen.py").write_text("GEN = 3\n")
    (root / "src" / "build").mkdir()
    (root / "src" / "build" / "out.py").write_text("OUT\n")
    (root / ".gitignore").write_text("build/\n")
    (root / "src" / ".gitignore").write_text("deep/gen.py\n")
    (root / "src" / ".hidden.py").write_text("H\n")
    (root / "src" / ".env").write_text("TOKEN=secret\n")
    (root / "src" / "server.key").write_text("-----BEGIN KEY-----\n")
    (root / "src" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (root / "src" / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    return root


def statuses(ctx: object) -> dict[str, str]:
    return {f.path: f.status for f in ctx.files}  # type: ignore[attr-defined]


def test_a_directory_honours_gitignore_hidden_secret_binary(ws: Path) -> None:
    ctx = gather(ws, ["src"], 10_000, cwd=ws)
    st = statuses(ctx)
    assert [f.path for f in ctx.included] == ["src/a.py", "src/deep/b.py"]
    assert "src/deep/gen.py" not in st and "src/build/out.py" not in st  # .gitignore
    assert "src/.hidden.py" not in st and "src/.env" not in st  # hidden
    assert st["src/server.key"] == "skipped"  # looks like a secret
    assert st["src/logo.png"] == "skipped" and st["src/latin1.txt"] == "skipped"
    assert "secret" in ctx.summary() and "binary" in ctx.summary()


def test_a_secret_named_alone_is_included(ws: Path) -> None:
    ctx = gather(ws, ["src/.env", "src/server.key"], 10_000, cwd=ws)
    assert [f.path for f in ctx.included] == ["src/.env", "src/server.key"]


def test_the_budget_leaves_whole_files_out_in_order(ws: Path) -> None:
    (ws / "src" / "big.py").write_text("x" * 400)  # ~100 tokens
    ctx = gather(ws, ["src/a.py", "src/big.py", "src/deep/b.py"], 50, cwd=ws)
    assert statuses(ctx) == {
        "src/a.py": "included",
        "src/big.py": "cut",
        "src/deep/b.py": "included",
    }
    again = ctx.within(3, "test")
    assert [f.path for f in again.included] == ["src/a.py"]
    assert "cut 2" in again.summary()


def test_links_fifos_and_loops_are_skipped_never_followed_out(ws: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("outside\n")
    (ws / "src" / "out.txt").symlink_to(outside)
    (ws / "src" / "loop.py").symlink_to(ws / "src" / "loop.py")
    os.mkfifo(ws / "src" / "pipe.py")
    ctx = gather(ws, ["src"], 10_000, cwd=ws)
    st = statuses(ctx)
    assert st["src/out.txt"] == "skipped" and st["src/loop.py"] == "skipped"
    assert st["src/pipe.py"] == "skipped"
    assert all("outside" not in f.text for f in ctx.included)


@pytest.mark.parametrize(
    ("spec", "says"),
    [("nope.py", "no such file"), ("../x", "outside the workspace"), ("*.zzz", "matches no")],
)
def test_bad_context_paths_are_usage_errors(ws: Path, spec: str, says: str) -> None:
    (ws.parent / "x").write_text("x")
    with pytest.raises(ConfigError, match=says):
        gather(ws, [spec], 100, cwd=ws)


@pytest.mark.parametrize(
    "path",
    [
        "/abs.py",
        "~/x.py",
        "../x.py",
        "a/../../x.py",
        ".git/hooks/pre-commit",
        "a\\b.py",
        "",
        "   ",
        "state/x",
        "C:x.py",
        "a\0b",
    ],
)
def test_paths_a_model_may_not_write(tmp_path: Path, path: str) -> None:
    (tmp_path / "state").mkdir()
    assert refused(path, tmp_path, (tmp_path / "state",)) is not None


@pytest.mark.parametrize("path", ["a.py", "./pkg//mod.py", "pkg/sub/new.py", ".github/ci.yml"])
def test_paths_a_model_may_write(tmp_path: Path, path: str) -> None:
    assert refused(path, tmp_path, ()) is None


def test_a_path_through_a_symlink_out_of_the_workspace_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert "symlink" in (refused("link/x.py", root, ()) or "")


def test_merge_keeps_plan_order_and_lets_the_integrator_decide_conflicts() -> None:
    a = [FileOut("m.py", "from s1", "s1"), FileOut("a.py", "a", "s1")]
    b = [FileOut("m.py", "from s2", "s2")]
    plain = merge([a, b])
    assert {f.path: f.content for f in plain.files} == {"a.py": "a", "m.py": "from s2"}
    assert plain.conflicts == {"m.py": ("s1", "s2")}
    decided = merge([a, b], [FileOut("m.py", "merged", "integrator")])
    assert {f.path: f.writer for f in decided.files} == {"a.py": "s1", "m.py": "integrator"}


@pytest.mark.parametrize(
    ("text", "paths", "body"),
    [
        (
            "---\ncontext:\n  - src/\n  - 'tests/*.py'\n---\nDo it\n",
            ["src/", "tests/*.py"],
            "Do it\n",
        ),
        ('---\ntitle: x\ncontext: [a.py, "b.py"]\n---\n\nDo it', ["a.py", "b.py"], "Do it"),
        ("---\ncontext: a.py\n---\nDo it", ["a.py"], "Do it"),
        ("Do it\n---\ncontext: a.py\n---\n", [], "Do it\n---\ncontext: a.py\n---\n"),
        ("---\nno end\n", [], "---\nno end\n"),
    ],
)
def test_a_task_files_front_matter_names_its_context(
    text: str, paths: list[str], body: str
) -> None:
    assert task_front_matter(text) == (paths, body)


def test_gitignore_negation_and_the_repository_exclude_file_follow_git(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "sub").mkdir(parents=True)
    (root / ".gitignore").write_text("*.log\n")
    (root / "sub" / ".gitignore").write_text("!keep.log\n")
    (root / "sub" / "keep.log").write_text("k\n")
    (root / "sub" / "drop.log").write_text("d\n")
    (root / "x.local").write_text("x\n")
    (root / "a.py").write_text("a\n")
    (root / ".git" / "info").mkdir(parents=True)
    (root / ".git" / "info" / "exclude").write_text("*.local\n")
    ctx = gather(root, ["."], 10_000, cwd=root)
    assert [f.path for f in ctx.included] == ["a.py", "sub/keep.log"]


def test_a_link_with_a_harmless_name_to_a_secret_is_left_out(ws: Path) -> None:
    (ws / "src" / "settings.txt").symlink_to(ws / "src" / ".env")
    (ws / "conf").mkdir()
    (ws / "conf" / "prod.tfvars").write_text("token = 1\n")
    (ws / "conf" / "service-account.json").write_text("{}\n")
    ctx = gather(ws, ["src", "conf"], 10_000, cwd=ws)
    st = statuses(ctx)
    assert st["src/settings.txt"] == "skipped"
    assert st["conf/prod.tfvars"] == "skipped" and st["conf/service-account.json"] == "skipped"


def test_git_and_globs_outside_are_usage_errors(ws: Path, tmp_path: Path) -> None:
    (ws / ".git").mkdir()
    (ws / ".git" / "config").write_text("[remote] url = https://ghp_x@github.com\n")
    with pytest.raises(ConfigError, match=r"\.git/ is never sent"):
        gather(ws, [".git"], 100, cwd=ws)
    (tmp_path / "outdir").mkdir()
    with pytest.raises(ConfigError, match="outside the workspace"):
        gather(ws, [str(tmp_path / "out*")], 100, cwd=ws)


def test_paths_through_files_too_long_or_into_git_by_a_link_are_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f.txt").write_text("x")
    (tmp_path / ".git").mkdir()
    (tmp_path / "gitlink").symlink_to(tmp_path / ".git", target_is_directory=True)
    assert "which is a file" in (refused("real/f.txt/x", tmp_path, ()) or "")
    assert "longer than" in (refused("a" * 300, tmp_path, ()) or "")
    assert ".git" in (refused("gitlink/config", tmp_path, ()) or "")
    assert ".git" in (refused(".GIT/config", tmp_path, ()) or "")
    assert "configuration" in (refused("CLAUDE.md", tmp_path, ()) or "")
    assert "configuration" in (refused("roles/naughty.toml", tmp_path, ()) or "")


def test_a_file_and_a_directory_of_one_name_are_a_conflict_the_later_wins() -> None:
    merged = merge([[FileOut("pkg", "x", "s1")], [FileOut("pkg/mod.py", "y", "s2")]])
    assert [f.path for f in merged.files] == ["pkg/mod.py"]
    assert set(merged.conflicts) == {"pkg", "pkg/mod.py"}
