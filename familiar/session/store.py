"""The session directory: its layout, its typed records, create / list / resume checks.

``FAMILIAR_HOME/sessions/<correlation_id>/`` holds, each written atomically
(:mod:`familiar.store`) as soon as its step completes:

    session.json            status, timings, roles, prompt versions, steps (SessionState)
    task.md                 the task as given
    config.json             the resolved configuration (slots without keys)
    plan.json               the validated plan
    subtasks/<id>.prompt.md the worker prompt as sent
    subtasks/<id>.json      the worker result (SubtaskRecord)
    subtasks/<id>.rejected.json   an answer the checks refused twice
    integration.json        the merged deliverable and decision check
    final.md                the result in the requested language
    final.<lang>.json       the translation of the deliverable
    context.json            the workspace files given as context (path, bytes, tokens,
                            sha256, included / cut / skipped and why)
    files/<path>            the files the session wrote, merged (files.json: who wrote
                            each, conflicts)
    fix.json                files the integrator corrected after a failed check
    checks/<n>.json         each run of the user's check (exit code, duration, tail)
    apply.diff              what --apply changed in the workspace (undo: git apply -R)

Every read goes through :func:`familiar.store.read_record`: a corrupt file is a
``StateError`` naming it (exit 2). The models allow extra keys, so files written by
other versions still load, and they dump their keys in the order written today.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from familiar.config.workspace import Config
from familiar.errors import StateError
from familiar.plan import Integration, Plan
from familiar.session.check import CheckRun
from familiar.store import read_record, write_json_atomic, write_text_atomic


class Step(BaseModel):
    """A finished step of the flow (``plan``, ``integrate``, ``translate``): when, and
    what it recorded about itself (extra keys)."""

    model_config = ConfigDict(extra="allow")

    finished: float


class SessionState(BaseModel):
    """``session.json``. Keys that were never set stay out of the file."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    id: str = ""
    created: float | None = None
    steps: dict[str, Step] = {}
    task_lang: str = ""
    lang: str = ""
    planner: str = ""
    roles: str = ""
    prompt_versions: dict[str, str] = {}
    status: str | None = None
    started: float | None = None
    updated: float | None = None
    failed: dict[str, str] | None = None
    error: str | None = None
    finished: float | None = None

    def record(self, **changes: Any) -> None:
        """Set fields (validated) and stamp ``updated``."""
        for name, value in changes.items():
            setattr(self, name, value)
        self.updated = time.time()

    def finish_step(self, name: str, **info: Any) -> None:
        self.steps[name] = Step.model_validate({"finished": time.time(), **info})
        self.record()


class SubtaskRecord(BaseModel):
    """``subtasks/<id>.json``: one finished subtask (only ``status == "ok"`` ones count)."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: str
    role: str | None = None
    slot: str | None = None
    preferred_role: str | None = None
    revision: bool = False
    output: str
    decisions_kept: list[str] = []
    notes: str = ""
    prompt_version: str | None = None
    finish_reason: str | None = None
    checks: list[str] = []
    attempts: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    completion_tokens: int | None = None
    replica: str | None = None
    #: whole files the subtask wrote: {"path", "content"} (paths checked when written)
    files: list[dict[str, str]] = []


class SessionRow(BaseModel):
    """One line of ``familiar sessions``; ``status == "unreadable"`` with ``error`` set when
    the session's records cannot be read."""

    id: str
    status: str
    roles: str
    started: float | None
    duration_s: float | None
    task: str
    error: str | None
    #: this run's prompt tokens and those the servers served from their prefix cache
    prompt_tokens: int | None = None
    cached_tokens: int | None = None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _context_entry(entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("path"), str)
        and bool(entry["path"])
        and entry.get("status") in ("included", "cut", "skipped")
        and _count(entry.get("bytes"))
        and _count(entry.get("tokens"))
        and isinstance(entry.get("sha256"), str)
    )


def _corrupt(what: str, path: Path, exc: ValidationError, hint: str = "") -> StateError:
    return StateError(f"{what} {path} is corrupt ({exc.error_count()} invalid field(s)){hint}")


class SessionStore:
    """The files of one session directory; every path of the layout is named here."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @property
    def id(self) -> str:
        return self.dir.name

    # -- paths ----------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.dir / "session.json"

    @property
    def plan_path(self) -> Path:
        return self.dir / "plan.json"

    @property
    def integration_path(self) -> Path:
        return self.dir / "integration.json"

    def subtask_path(self, sid: str, suffix: str = ".json") -> Path:
        """``subtasks/<sid><suffix>``: ``.json``, ``.prompt.md`` or ``.rejected.json``."""
        return self.dir / "subtasks" / f"{sid}{suffix}"

    def translation_path(self, lang: str) -> Path:
        return self.dir / f"final.{lang}.json"

    # -- reading --------------------------------------------------------------------------

    def read_task(self) -> str:
        return (self.dir / "task.md").read_text(encoding="utf-8")

    def read_state(self) -> SessionState | None:
        """``session.json`` as written, or None when there is none yet."""
        if not self.state_path.exists():
            return None
        return self._state(read_record(self.state_path, "session state"))

    def open_state(self, **current: Any) -> SessionState:
        """The state to run with: the recorded one (or a new one) updated with ``current``."""
        path = self.state_path
        data = read_record(path, "session state") if path.exists() else {}
        data.setdefault("id", self.id)
        data.setdefault("created", time.time())
        data.setdefault("steps", {})
        return self._state({**data, **current})

    def _state(self, data: Mapping[str, Any]) -> SessionState:
        try:
            return SessionState.model_validate(data)
        except ValidationError as exc:
            raise _corrupt("session state", self.state_path, exc) from None

    def read_plan(self) -> Plan | None:
        if not self.plan_path.exists():
            return None
        try:
            return Plan.model_validate(read_record(self.plan_path, "plan"))
        except ValidationError as exc:
            raise _corrupt("plan", self.plan_path, exc, "; remove it to plan again") from None

    def read_subtask(self, path: Path) -> SubtaskRecord | None:
        """A subtask record; None unless its status is ok (nothing finished). A record
        whose status is not a word is corrupt, not "unfinished": it is refused, never
        silently redone."""
        record = read_record(path, "subtask record")
        status = record.get("status")
        if not isinstance(status, str) or not status:
            raise StateError(
                f"subtask record {path} is corrupt (status {status!r} is not a word);"
                " remove it to redo"
            )
        if status != "ok":
            return None
        if not isinstance(record.get("output"), str):
            raise StateError(f"subtask record {path} is corrupt (no output); remove it to redo")
        try:
            return SubtaskRecord.model_validate(record)
        except ValidationError as exc:
            raise _corrupt("subtask record", path, exc, "; remove it to redo") from None

    def finished(self, plan: Plan) -> dict[str, SubtaskRecord]:
        """The plan's subtasks already done (resume asks only for the others)."""
        out = {}
        for s in plan.subtasks:
            path = self.subtask_path(s.id)
            if path.exists() and (record := self.read_subtask(path)) is not None:
                out[s.id] = record
        return out

    def read_deliverable(self) -> str | None:
        path = self.integration_path
        if not path.exists():
            return None
        recorded = read_record(path, "integration record")
        if not isinstance(recorded.get("deliverable"), str):
            raise StateError(f"integration record {path} is corrupt (no deliverable)")
        try:
            Integration.model_validate(recorded)
        except ValidationError as exc:
            raise _corrupt("integration record", path, exc, "; remove it to merge again") from None
        return str(recorded["deliverable"])

    def _file_list(self, path: Path, what: str, key: str) -> list[dict[str, str]]:
        if not path.exists():
            return []
        files = read_record(path, what).get(key, [])
        if not isinstance(files, list) or not all(
            isinstance(f, dict)
            and isinstance(f.get("path"), str)
            and isinstance(f.get("content"), str)
            for f in files
        ):
            raise StateError(f"{what} {path} is corrupt (files must be path/content pairs)")
        return [{"path": f["path"], "content": f["content"]} for f in files]

    def read_decided(self) -> list[dict[str, str]]:
        """Files whose version the integrator decided: its merge's, then its fix's."""
        merged = self._file_list(self.integration_path, "integration record", "files")
        return [*merged, *self.read_fix()]

    def read_fix(self) -> list[dict[str, str]]:
        return self._file_list(self.dir / "fix.json", "fix record", "files")

    def read_context(self) -> dict[str, Any] | None:
        path = self.dir / "context.json"
        if not path.exists():
            return None
        record = read_record(path, "context record")
        files = record.get("files")
        good = (
            isinstance(files, list)
            and all(_context_entry(f) for f in files)
            and _count(record.get("budget"))
            and isinstance(record.get("budget_source", ""), str)
        )
        if not good:
            raise StateError(f"context record {path} is corrupt; remove it to run without context")
        return record

    def read_checks(self) -> list[CheckRun]:
        """The check runs recorded, in order; a corrupt one is a StateError."""
        runs = []
        for path in sorted(self.dir.glob("checks/*.json"), key=lambda p: (len(p.name), p.name)):
            run = CheckRun.from_record(read_record(path, "check record"))
            if run is None:
                raise StateError(f"check record {path} is corrupt; remove it to check again")
            runs.append(run)
        return runs

    def read_translation(self, lang: str) -> str | None:
        path = self.translation_path(lang)
        if not path.exists():
            return None
        recorded = read_record(path, "translation record")
        if not isinstance(recorded.get("text"), str):
            raise StateError(f"translation record {path} is corrupt (no text)")
        return str(recorded["text"])

    def check_resumable(self) -> None:
        """Read every record before a resume: a corrupt one is a StateError naming the
        file, raised before anything is written (the directory stays as it is)."""
        self.read_state()
        self.read_plan()
        for path in sorted((self.dir / "subtasks").glob("*.json")):
            if not path.name.endswith(".rejected.json"):
                self.read_subtask(path)
        self.read_deliverable()
        self.read_decided()
        self.read_context()
        self.read_checks()
        for path in sorted(self.dir.glob("final.*.json")):
            self.read_translation(path.name.removeprefix("final.").removesuffix(".json"))

    # -- writing --------------------------------------------------------------------------

    def save_state(self, state: SessionState) -> None:
        write_json_atomic(self.state_path, state.model_dump(mode="json", exclude_unset=True))

    def save_plan(self, plan: Plan) -> None:
        write_json_atomic(self.plan_path, plan.model_dump(mode="json"))

    def save_prompt(self, sid: str, text: str) -> None:
        write_text_atomic(self.subtask_path(sid, ".prompt.md"), text)

    def save_subtask(self, record: SubtaskRecord) -> None:
        # a subtask that wrote no file keeps the record shape of a text-only session
        skip = None if record.files else {"files"}
        write_json_atomic(
            self.subtask_path(record.id), record.model_dump(mode="json", exclude=skip)
        )

    def save_rejected(self, sid: str, checks: list[str], answer: str) -> None:
        write_json_atomic(
            self.subtask_path(sid, ".rejected.json"),
            {"id": sid, "status": "rejected", "checks": checks, "answer": answer},
        )

    def save_integration(self, record: Mapping[str, Any]) -> None:
        write_json_atomic(self.integration_path, dict(record))

    def save_translation(self, lang: str, text: str, source_lang: str) -> None:
        write_json_atomic(
            self.translation_path(lang), {"text": text, "from": source_lang, "to": lang}
        )

    def save_final(self, text: str) -> None:
        write_text_atomic(self.dir / "final.md", text)

    def save_context(self, record: Mapping[str, Any]) -> None:
        write_json_atomic(self.dir / "context.json", dict(record))

    def save_files(self, record: Mapping[str, Any]) -> None:
        write_json_atomic(self.dir / "files.json", dict(record))

    def save_fix(self, files: list[dict[str, str]]) -> None:
        write_json_atomic(self.dir / "fix.json", {"files": files})

    def save_check(self, record: Mapping[str, Any]) -> None:
        n = len(list(self.dir.glob("checks/*.json"))) + 1
        write_json_atomic(self.dir / "checks" / f"{n}.json", {"n": n, **record})


def check_resumable(directory: Path) -> None:
    """See :meth:`SessionStore.check_resumable`."""
    SessionStore(directory).check_resumable()


def create_session_dir(cfg: Config, task: str, sid: str) -> Path:
    """A new session directory with ``task.md`` and ``config.json``; StateError when the
    state directory cannot take it."""
    directory = cfg.home / "sessions" / sid
    try:
        directory.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise StateError(
            f"cannot create a session under {cfg.home / 'sessions'}: {exc.strerror or exc}"
            " (set FAMILIAR_HOME to a writable directory)"
        ) from None
    write_text_atomic(directory / "task.md", task)
    write_json_atomic(
        directory / "config.json",
        {
            "roles": cfg.role_config.canonical(),
            "role_source": cfg.role_source,
            "workspace": str(cfg.workspace),
            "slots_file": str(cfg.slots_file),
            "slots": {name: s.public() for name, s in cfg.active_slots.items()},
        },
    )
    return directory


def list_sessions(home: Path) -> list[SessionRow]:
    """Every session with a ``session.json``, oldest first; unreadable ones as such."""
    root = home / "sessions"
    return [
        _row(d)
        for d in sorted(root.iterdir() if root.is_dir() else [], key=_mtime)
        if (d / "session.json").exists()
    ]


def _row(directory: Path) -> SessionRow:
    store = SessionStore(directory)
    try:
        st = store.read_state() or SessionState()
        task_path = directory / "task.md"
        task = store.read_task() if task_path.exists() else ""
    except (StateError, OSError, UnicodeDecodeError) as exc:
        return SessionRow(
            id=directory.name,
            status="unreadable",
            roles="",
            started=None,
            duration_s=None,
            task="",
            error=str(exc),
        )
    started, finished = st.started, st.finished
    reason = st.error or (
        "; ".join(f"{k}: {v}" for k, v in st.failed.items()) if st.failed else None
    )
    return SessionRow(
        id=directory.name,
        status="?" if st.status is None else st.status,
        roles=st.roles,
        started=started,
        duration_s=None if started is None or finished is None else round(finished - started, 1),
        task=" ".join(task.split()),
        error=reason if st.status in ("failed", "interrupted") else None,
        prompt_tokens=_total(st, "prompt_tokens"),
        cached_tokens=_total(st, "cached_tokens"),
    )


def _total(st: SessionState, key: str) -> int | None:
    """A count from ``session.json``'s ``totals`` (None: absent or not a count)."""
    totals = getattr(st, "totals", None)
    value = totals.get(key) if isinstance(totals, dict) else None
    return value if _count(value) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
