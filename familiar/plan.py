"""The plan: goal, pinned decisions, subtasks -- its model, schema and validation (pure).

The planner answers with a JSON object matching :data:`PLAN_SCHEMA` (requested with
JSON-schema constrained decoding where the runtime supports it). :func:`parse_plan`
turns text into a validated :class:`Plan` or raises :class:`PlanInvalid` with a
message that can be shown to the model in a repair round. Validation: unique ids,
dependencies that exist, no cycles, a bounded number of subtasks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from familiar.errors import PlanInvalid

MAX_SUBTASKS = 8
_ID = r"^[a-z0-9][a-z0-9_-]{0,23}$"

Difficulty = Literal["hard", "easy"]


class Subtask(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[str, Field(pattern=_ID)]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    instructions: Annotated[str, Field(min_length=1)]
    acceptance: str = ""
    depends_on: tuple[str, ...] = ()
    difficulty: Difficulty = "easy"
    #: the context files (workspace-relative paths) this subtask needs to see
    files: tuple[str, ...] = ()


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    goal: Annotated[str, Field(min_length=1)]
    decisions: tuple[str, ...] = ()
    subtasks: Annotated[tuple[Subtask, ...], Field(min_length=1, max_length=MAX_SUBTASKS)]
    fallback: bool = False  # True when planning failed and the task became one subtask

    def subtask(self, sid: str) -> Subtask:
        for s in self.subtasks:
            if s.id == sid:
                return s
        raise KeyError(sid)

    def order(self) -> list[str]:
        """Subtask ids in a dependency-respecting order (stable by plan order)."""
        return topo_order(self.subtasks)

    def dependents(self, sid: str) -> set[str]:
        """Every subtask that depends on ``sid``, directly or not."""
        out: set[str] = set()
        frontier = {sid}
        while frontier:
            nxt = {s.id for s in self.subtasks if frontier & set(s.depends_on)} - out
            out |= nxt
            frontier = nxt
        return out


#: every field name of the plan's schema (an answer that is only one of these is no answer)
PLAN_FIELDS = (
    "goal",
    "decisions",
    "subtasks",
    "id",
    "title",
    "instructions",
    "acceptance",
    "depends_on",
    "difficulty",
)


def _subtask_schema(k: int, paths: tuple[str, ...] = ()) -> dict[str, Any]:
    """Subtask number ``k``: its id is ``s<k>``; it may depend only on earlier ones; with
    context ``paths``, the files it needs are some of those paths and no others."""
    earlier = [f"s{i}" for i in range(1, k)]
    deps: dict[str, Any] = {"type": "array", "maxItems": min(len(earlier), 4)}
    if earlier:
        deps["items"] = {"type": "string", "enum": earlier}
    properties: dict[str, Any] = {
        "id": {"type": "string", "const": f"s{k}"},
        "title": {"type": "string", "minLength": 1},
        "instructions": {"type": "string", "minLength": 1},
        "acceptance": {"type": "string"},
        "depends_on": deps,
        "difficulty": {"type": "string", "enum": ["hard", "easy"]},
    }
    required = ["id", "title", "instructions", "acceptance", "depends_on", "difficulty"]
    if paths:
        properties["files"] = {
            "type": "array",
            "items": {"type": "string", "enum": list(paths)},
            "maxItems": len(paths),
        }
        required.append("files")
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def plan_schema(
    max_subtasks: int = MAX_SUBTASKS, min_subtasks: int = 1, paths: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The JSON schema the planner answers with.

    Ids are positional (``s1``, ``s2``, ...) and dependencies may only point backwards,
    so any answer that matches the schema is unique-id, dangling-free and acyclic by
    construction: constrained decoding makes even a tiny model produce a usable plan.
    Strings carry no length bounds: those expand into huge grammars that slow decoding.
    """
    lengths = range(max(1, min_subtasks), max_subtasks + 1)
    return {
        "type": "object",
        "properties": {
            "goal": {"type": "string", "minLength": 1},
            "decisions": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "maxItems": 8,
            },
            "subtasks": {
                "anyOf": [
                    {
                        "type": "array",
                        "prefixItems": [_subtask_schema(k, paths) for k in range(1, n + 1)],
                        "minItems": n,
                        "maxItems": n,
                    }
                    for n in lengths
                ]
            },
        },
        "required": ["goal", "decisions", "subtasks"],
        "additionalProperties": False,
    }


def topo_order(subtasks: Iterable[Subtask]) -> list[str]:
    """Kahn's algorithm, stable by input order; raises PlanInvalid on a cycle."""
    items = list(subtasks)
    done: list[str] = []
    placed: set[str] = set()
    remaining = items
    while remaining:
        ready = [s for s in remaining if set(s.depends_on) <= placed]
        if not ready:
            cycle = ", ".join(s.id for s in remaining)
            raise PlanInvalid(f"dependency cycle among subtasks: {cycle}")
        for s in ready:
            done.append(s.id)
            placed.add(s.id)
        remaining = [s for s in remaining if s.id not in placed]
    return done


def validate_plan(plan: Plan, paths: tuple[str, ...] | None = None) -> Plan:
    """Unique ids, known dependencies, no cycle; with context ``paths``, every file a
    subtask names is one of them."""
    ids = [s.id for s in plan.subtasks]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise PlanInvalid(f"subtask ids must be unique; repeated: {', '.join(dupes)}")
    known = set(ids)
    for s in plan.subtasks:
        unknown = [d for d in s.depends_on if d not in known]
        if unknown:
            raise PlanInvalid(f"subtask {s.id!r} depends on unknown id(s): {', '.join(unknown)}")
        if s.id in s.depends_on:
            raise PlanInvalid(f"subtask {s.id!r} depends on itself")
        if paths is not None:
            strange = [f for f in s.files if f not in paths]
            if strange:
                raise PlanInvalid(
                    f"subtask {s.id!r} names files not in the context: {', '.join(strange)}"
                )
    topo_order(plan.subtasks)
    return plan


def extract_json(text: str) -> Any:
    """The first JSON object in ``text`` (models without constrained decoding chatter)."""
    text = text.strip()
    fenced = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.S)
    if fenced:
        text = fenced.group(1)
    start = text.find("{")
    if start < 0:
        raise PlanInvalid("the answer holds no JSON object")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        raise PlanInvalid(f"the answer is not valid JSON: {exc}") from None
    return obj


def parse_plan(
    text: str, max_subtasks: int = MAX_SUBTASKS, paths: tuple[str, ...] | None = None
) -> Plan:
    """Text -> validated Plan, or PlanInvalid with a one-paragraph reason."""
    data = extract_json(text)
    if not isinstance(data, dict):
        raise PlanInvalid("the answer must be a JSON object")
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise PlanInvalid(f"{where}: {err['msg']}") from None
    if len(plan.subtasks) > max_subtasks:
        raise PlanInvalid(f"at most {max_subtasks} subtasks, got {len(plan.subtasks)}")
    return validate_plan(plan, paths)


def fallback_plan(task: str, paths: tuple[str, ...] = ()) -> Plan:
    """The whole task as one subtask (seeing every context file), marked as a fallback."""
    text = task.strip() or "the task"
    return Plan(
        goal=text[:400],
        subtasks=(
            Subtask(
                id="task",
                title="The whole task",
                instructions=text,
                acceptance="The task is done as asked.",
                difficulty="hard",
                files=paths,
            ),
        ),
        fallback=True,
    )


class FileAnswer(BaseModel):
    """A whole file a model writes (its path is checked before anything is written)."""

    model_config = ConfigDict(extra="ignore")

    path: str
    content: str


class WorkerOutput(BaseModel):
    """What every worker answers with."""

    model_config = ConfigDict(extra="ignore")

    output: str
    decisions_kept: list[str] = []
    notes: str = ""
    files: list[FileAnswer] = []


MAX_FILES_PER_ANSWER = 8
FILES_SCHEMA: dict[str, Any] = {
    "type": "array",
    "maxItems": MAX_FILES_PER_ANSWER,
    "items": {
        "type": "object",
        "properties": {
            "path": {"type": "string", "minLength": 1, "maxLength": 200},
            "content": {"type": "string"},
        },
        "required": ["path", "content"],
        "additionalProperties": False,
    },
}


def with_files(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a required ``files`` array (whole files, by path)."""
    return {
        **schema,
        "properties": {**schema["properties"], "files": FILES_SCHEMA},
        "required": [*schema["required"], "files"],
    }


WORKER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "output": {"type": "string", "minLength": 1},
        "decisions_kept": {
            "type": "array",
            "items": {"type": "string", "maxLength": 200},
            "maxItems": 8,
        },
        # bounded, so that constrained decoding closes a runaway note instead of running
        # into max_tokens and leaving the JSON unfinished
        "notes": {"type": "string", "maxLength": 300},
    },
    "required": ["output", "decisions_kept", "notes"],
    "additionalProperties": False,
}


class Violation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    subtask_id: str
    decision: str
    explanation: str = ""


class Integration(BaseModel):
    model_config = ConfigDict(extra="ignore")

    deliverable: str
    violations: list[Violation] = []
    #: what familiar's checks rejected on the way (recorded, never sent to a model)
    checks: list[str] = []
    #: set when the merge was replaced by a plain merge of the worker outputs, and why
    fallback: str | None = None
    #: the finish reason of the answer used (None for a plain merge)
    finish_reason: str | None = None
    #: files the integrator wrote: the version of a path several workers wrote
    files: list[FileAnswer] = []


INTEGRATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "deliverable": {"type": "string", "minLength": 1},
        "violations": {
            "type": "array",
            "maxItems": 8,
            "items": {
                "type": "object",
                "properties": {
                    "subtask_id": {"type": "string", "pattern": _ID},
                    "decision": {"type": "string"},
                    "explanation": {"type": "string"},
                },
                "required": ["subtask_id", "decision", "explanation"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["deliverable", "violations"],
    "additionalProperties": False,
}
