"""What a session keeps, pure: the checks an answer must pass before it is recorded.

An answer is refused when it is empty, copies an example of its prompt
(:mod:`familiar.copycheck`), or (a worker's JSON answer) was cut off at ``max_tokens``.
A refused answer is asked again once, differently (:func:`retry_temperature`).
"""

from __future__ import annotations

from pydantic import ValidationError

from familiar import copycheck
from familiar.backend import CallResult
from familiar.errors import PlanInvalid
from familiar.plan import Integration, Plan, WorkerOutput, extract_json, parse_plan


def retry_temperature(temperature: float, retry: bool) -> float:
    """The sampling temperature of an attempt: a retry after a refused answer asks
    warmer, so a model that copied an example at temperature 0 does not copy it again
    word for word."""
    chosen = max(temperature + 0.3, 0.7) if retry else temperature
    return min(chosen, 2.0)


def problem(text: str, examples: list[str], allowed: str) -> str | None:
    """Why an answer cannot be kept: empty, or a copy of a prompt's example."""
    if not text.strip():
        return "the answer was empty"
    snippet = copycheck.copied(text, examples, allowed=allowed)
    if snippet is not None:
        shown = " ".join(snippet.split())
        shown = shown if len(shown) <= 60 else shown[:59] + "…"
        return f"the answer copied the prompt's example ({shown!r})"
    return None


def plan_answer(text: str, max_subtasks: int, examples: list[str], task: str) -> Plan:
    """The planner's answer as a validated plan, or PlanInvalid saying why not."""
    plan = parse_plan(text, max_subtasks)
    copied = copycheck.copied(text, examples, allowed=task)
    if copied is not None:
        raise PlanInvalid(f"the plan copies the prompt's example ({copied[:60]!r})")
    return plan


def worker_answer(result: CallResult) -> tuple[WorkerOutput, str | None]:
    """A worker's answer and why its form cannot be kept (None: it can).

    Prose from a model without constrained decoding is kept as the output; a JSON answer
    cut off at max_tokens is not a finished answer.
    """
    try:
        return WorkerOutput.model_validate(extract_json(result.text)), None
    except (PlanInvalid, ValidationError):
        parsed = WorkerOutput(output=result.text.strip(), notes="answer was not JSON")
        cut = (
            f"the answer was cut off at max_tokens ({result.completion_tokens} tokens)"
            if result.finish_reason == "length"
            else None
        )
        return parsed, cut


def integration_answer(text: str) -> Integration | None:
    """The integrator's answer, or None when it is not the JSON object asked for."""
    try:
        return Integration.model_validate(extract_json(text))
    except (PlanInvalid, ValidationError):
        return None


NOT_JSON = "the answer was not the JSON object asked for"
