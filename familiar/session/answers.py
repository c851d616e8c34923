"""What a session keeps, pure: the checks an answer must pass before it is recorded.

An answer is refused when it is empty, copies an example of its prompt
(:mod:`familiar.copycheck`), is degenerate (only a field name of the answer's schema, a
bare number, or a piece of the role's own instructions), or was cut off at
``max_tokens`` (whatever its shape: a cut answer that happens to parse is still cut).
A refused answer is asked again once, differently (:func:`retry_temperature`).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from familiar import copycheck
from familiar.client.backend import CallResult
from familiar.errors import PlanInvalid
from familiar.plan import (
    INTEGRATION_SCHEMA,
    PLAN_FIELDS,
    WORKER_SCHEMA,
    Integration,
    Plan,
    WorkerOutput,
    extract_json,
    parse_plan,
)

#: words an answer may not consist of: the field names of the schemas answers follow
FIELD_NAMES = frozenset(
    {
        *WORKER_SCHEMA["properties"],
        *INTEGRATION_SCHEMA["properties"],
        *PLAN_FIELDS,
        "files",
        "path",
        "content",
    }
)
_BARE_NUMBER = re.compile(r"[-+]?(\d+([.,]\d*)?|[.,]\d+)([eE][-+]?\d+)?%?")
_MIN_INSTRUCTION_COPY = 24  # shorter answers may coincide with a phrase of the prompt


def retry_temperature(temperature: float, retry: bool) -> float:
    """The sampling temperature of an attempt: a retry after a refused answer asks
    warmer, so a model that copied an example at temperature 0 does not copy it again
    word for word."""
    chosen = max(temperature + 0.3, 0.7) if retry else temperature
    return min(chosen, 2.0)


def cut_off(result: CallResult) -> str | None:
    """Why an answer the server stopped at ``max_tokens`` is not finished (None: it is)."""
    if result.finish_reason != "length":
        return None
    return f"the answer was cut off at max_tokens ({result.completion_tokens} tokens)"


def _words(text: str) -> str:
    return " ".join(text.lower().split())


def degenerate(text: str, instructions: str = "", allowed: str = "") -> str | None:
    """Why an answer is no answer at all: a schema field name (``"output"``), a bare
    number (``"0"``), or a piece of the role's own instructions repeated back."""
    stripped = text.strip().strip("\"'`.:;,").strip()
    if stripped.lower() in FIELD_NAMES:
        return f"the answer is only the field name {stripped!r}"
    if _BARE_NUMBER.fullmatch(stripped):
        return f"the answer is only the number {stripped!r}"
    words = _words(stripped)
    if (
        instructions
        and len(words) >= _MIN_INSTRUCTION_COPY
        and words in _words(instructions)
        and words not in _words(allowed)
    ):
        shown = words if len(words) <= 60 else words[:59] + "…"
        return f"the answer repeats the role's own instructions ({shown!r})"
    return None


def problem(text: str, examples: list[str], allowed: str, instructions: str = "") -> str | None:
    """Why an answer cannot be kept: empty, degenerate, or a copy of a prompt's example.
    ``instructions`` is the role's system prompt (an answer may not merely repeat it)."""
    if not text.strip():
        return "the answer was empty"
    bad = degenerate(text, instructions, allowed)
    if bad is not None:
        return bad
    snippet = copycheck.copied(text, examples, allowed=allowed)
    if snippet is not None:
        shown = " ".join(snippet.split())
        shown = shown if len(shown) <= 60 else shown[:59] + "…"
        return f"the answer copied the prompt's example ({shown!r})"
    return None


def plan_answer(
    result: CallResult,
    max_subtasks: int,
    examples: list[str],
    task: str,
    paths: tuple[str, ...] = (),
) -> Plan:
    """The planner's answer as a validated plan, or PlanInvalid saying why not (a plan
    cut at ``max_tokens`` is refused even when what arrived parses)."""
    cut = cut_off(result)
    if cut is not None:
        raise PlanInvalid(cut)
    text = result.text
    plan = parse_plan(text, max_subtasks, paths or None)
    copied = copycheck.copied(text, examples, allowed=task)
    if copied is not None:
        raise PlanInvalid(f"the plan copies the prompt's example ({copied[:60]!r})")
    return plan


def worker_answer(result: CallResult) -> tuple[WorkerOutput, str | None]:
    """A worker's answer and why its form cannot be kept (None: it can).

    Prose from a model without constrained decoding is kept as the output; an answer cut
    off at max_tokens is not a finished answer, whatever its shape.
    """
    try:
        parsed = WorkerOutput.model_validate(extract_json(result.text))
    except (PlanInvalid, ValidationError):
        parsed = WorkerOutput(output=result.text.strip(), notes="answer was not JSON")
    return parsed, cut_off(result)


def integration_answer(result: CallResult) -> Integration | None:
    """The integrator's answer, or None when it is not the JSON object asked for."""
    try:
        return Integration.model_validate(extract_json(result.text))
    except (PlanInvalid, ValidationError):
        return None


def fix_answer(result: CallResult) -> list[dict[str, Any]] | None:
    """The files of an integrator's fix, or None when it is not the JSON asked for."""
    try:
        data = extract_json(result.text)
    except PlanInvalid:
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        return None
    return files


NOT_JSON = "the answer was not the JSON object asked for"
