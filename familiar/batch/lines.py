"""OpenAI Batch JSONL, pure: request lines in, result lines out.

A request line is ``{"custom_id", "method": "POST", "url", "body"}`` with ``url``
``/v1/chat/completions`` or ``/v1/completions``. A result line is what the OpenAI Batch
API writes: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error": null}``, or ``"response": null`` and ``"error": {"code", "message"}``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from familiar.client.backend import CallResult

Kind = Literal["chat", "completion"]
URLS: dict[str, Kind] = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
#: body keys familiar sets itself (the slot's model; streaming is how familiar reads)
_OWN = ("model", "stream", "stream_options")
MAX_TOKENS = 10_000_000


@dataclass(frozen=True)
class Request:
    line: int  # 1-based line number in the input
    custom_id: str
    kind: Kind
    body: dict[str, Any]

    @property
    def model(self) -> str | None:
        model = self.body.get("model")
        return model if isinstance(model, str) else None

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema of a ``response_format`` of type ``json_schema``, if any."""
        fmt = self.body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if isinstance(schema, dict):
                return schema
        return None

    def params(self) -> dict[str, Any]:
        """The body as sent: familiar's own keys left out."""
        return {k: v for k, v in self.body.items() if k not in _OWN}


@dataclass(frozen=True)
class LineError:
    """A line that is not a request familiar can send: its own error line."""

    line: int
    custom_id: str
    code: str
    message: str


def line_id(n: int) -> str:
    """The custom id given to a line that has none of its own (so it still gets a line)."""
    return f"line-{n}"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (out of range)")


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _loads(raw: bytes | str) -> Any:
    """A line as JSON: UTF-8 only, no NaN/Infinity; ValueError saying why not (a line
    nested too deep to decode is not JSON either)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("it is nested too deeply") from None
    if _SURROGATE.search(text):  # "\ud800" alone decodes to no character UTF-8 can write
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("it holds a lone surrogate escape (\\ud800-\\udfff)") from None
    return data


def _messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "a chat request needs messages"
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return "every message needs a role"
        if not isinstance(m.get("content"), str | list):
            return "every message needs content (a string or a list of parts)"
    return None


def parse(n: int, raw: bytes | str) -> Request | LineError:
    """One input line (``n`` is 1-based) as a request, or why it cannot be one."""
    try:
        data = _loads(raw)
    except ValueError as exc:
        return LineError(n, line_id(n), "invalid_json", f"line {n} is not JSON: {exc}")
    if not isinstance(data, dict):
        return LineError(n, line_id(n), "invalid_request", f"line {n} is not a JSON object")
    cid = data.get("custom_id")
    if not isinstance(cid, str) or not cid:
        why = (
            "has no custom_id" if cid is None or cid == "" else "has a custom_id that is no string"
        )
        return LineError(n, line_id(n), "invalid_request", f"line {n} {why}")
    url = data.get("url")
    if url not in URLS:
        return LineError(
            n, cid, "invalid_url", f"url {url!r} is not one of {', '.join(sorted(URLS))}"
        )
    method = data.get("method", "POST")
    if method != "POST":
        return LineError(n, cid, "invalid_request", f"method {method!r}: only POST is sent")
    body = data.get("body")
    if not isinstance(body, dict):
        return LineError(n, cid, "invalid_request", "body must be a JSON object")
    kind = URLS[url]
    problem = _messages_problem(body.get("messages")) if kind == "chat" else None
    if problem is not None:
        return LineError(n, cid, "invalid_request", problem)
    limit = body.get("max_tokens")
    if limit is not None and (
        not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_TOKENS
    ):
        return LineError(n, cid, "invalid_request", f"max_tokens must be 1..{MAX_TOKENS:,}")
    if kind == "completion" and not isinstance(body.get("prompt"), str):
        return LineError(n, cid, "invalid_request", "a completion request needs a prompt string")
    if body.get("n", 1) != 1:
        return LineError(n, cid, "invalid_request", "n must be 1 (one answer per request)")
    return Request(n, cid, kind, body)


def custom_id_of(raw: bytes | str) -> str | None:
    """The custom id of a line, if it has one (for the up-front duplicate check)."""
    try:
        data = _loads(raw)
    except ValueError:
        return None
    cid = data.get("custom_id") if isinstance(data, dict) else None
    return cid if isinstance(cid, str) and cid else None


def _req_id(custom_id: str) -> str:
    return "batch_req_" + hashlib.sha256(custom_id.encode()).hexdigest()[:24]


def response_body(req: Request, result: CallResult) -> dict[str, Any]:
    """The answer as the OpenAI API would have returned it."""
    usage = {
        "prompt_tokens": result.prompt_tokens or 0,
        "completion_tokens": result.completion_tokens or 0,
        "total_tokens": (result.prompt_tokens or 0) + (result.completion_tokens or 0),
    }
    choice: dict[str, Any]
    if req.kind == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "finish_reason": result.finish_reason,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": result.text, "finish_reason": result.finish_reason}
        obj = "text_completion"
    return {
        "id": "cmpl-" + hashlib.sha256(f"{req.custom_id}{time.time()}".encode()).hexdigest()[:24],
        "object": obj,
        "created": int(time.time()),
        "model": result.model,
        "choices": [choice],
        "usage": usage,
    }


def ok_line(req: Request, result: CallResult, correlation_id: str) -> str:
    return json.dumps(
        {
            "id": _req_id(req.custom_id),
            "custom_id": req.custom_id,
            "response": {
                "status_code": 200,
                "request_id": correlation_id,
                "body": response_body(req, result),
            },
            "error": None,
        },
        ensure_ascii=False,
    )


def error_line(custom_id: str, code: str, message: str) -> str:
    return json.dumps(
        {
            "id": _req_id(custom_id),
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        },
        ensure_ascii=False,
    )


def done_id(raw: bytes) -> tuple[str, bool] | None:
    """A result line read back for a resume: its custom id and whether it succeeded
    (None: not a result line familiar wrote)."""
    try:
        data = _loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("custom_id"), str):
        return None
    if "response" not in data or "error" not in data:  # a request line, say: not a result
        return None
    response = data.get("response")
    ok = isinstance(response, dict) and response.get("status_code") == 200
    return data["custom_id"], ok


@dataclass(frozen=True)
class ResultLine:
    """A result line read back from another process (a queue worker's answer)."""

    custom_id: str
    ok: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def read_result(raw: bytes | str) -> ResultLine | None:
    """A result line in the shape familiar writes: a 200 response with a body and no
    error, or no response and an error with a code and a message; None otherwise."""
    try:
        data = _loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    cid, response, error = data.get("custom_id"), data.get("response"), data.get("error")
    if not isinstance(cid, str) or not cid:
        return None
    if error is None and isinstance(response, dict) and response.get("status_code") == 200:
        body = response.get("body")
        if not isinstance(body, dict):
            return None
        usage = body.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return ResultLine(
            cid, True, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        )
    if (
        response is None
        and isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    ):
        return ResultLine(cid, False)
    return None
