"""The request groups' pure parts: cutting, ids, the wire format, result lines read back."""

from __future__ import annotations

import json

import pytest

from familiar.batch.lines import read_result
from familiar.queue.groups import (
    GroupOptions,
    RequestGroup,
    cut,
    decode_job,
    group_id,
    group_text,
    split_text,
)
from familiar.queue.jobs import JobMessage, JobOptions


def test_cut_keeps_order_and_both_bounds() -> None:
    runs = list(cut(range(10), lambda _x: 1, max_requests=4, max_bytes=100))
    assert runs == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    sizes = {0: 5, 1: 5, 2: 50, 3: 1, 4: 1}
    runs = list(cut(range(5), sizes.__getitem__, max_requests=10, max_bytes=10))
    assert runs == [[0, 1], [2], [3, 4]]  # one over the budget is a run of its own
    assert list(cut([], len, max_requests=1, max_bytes=1)) == []
    with pytest.raises(ValueError):
        list(cut([1], lambda _x: 1, max_requests=0, max_bytes=1))


def test_a_group_id_is_its_text_and_options() -> None:
    text = group_text([b'{"custom_id": "a"}\r\n', '{"custom_id": "b"}'])
    assert text == '{"custom_id": "a"}\n{"custom_id": "b"}\n'
    base = group_id(text, GroupOptions(role="naughty"))
    assert base == group_id(text, GroupOptions(role="naughty")) and len(base) == 40
    others = {
        group_id(text, GroupOptions(slot="naughty")),
        group_id(text, GroupOptions()),
        group_id(text[:-1], GroupOptions(role="naughty")),
    }
    assert base not in others and len(others) == 3


def test_split_text_splits_on_newlines_only() -> None:
    line = json.dumps({"custom_id": "x", "t": "a\u2028b"}, ensure_ascii=False)
    assert split_text(group_text([line, line])) == [line, line]
    assert split_text("") == [""]


def test_a_group_survives_the_wire_and_a_job_is_told_apart() -> None:
    group = RequestGroup("j1", "req.jsonl lines 1-2", GroupOptions(slot="s"), (1, 3), text="x\ny\n")
    back = decode_job(group.encode())
    assert back == group
    stored = RequestGroup("j2", "r", GroupOptions(), (7,), text_object="requests.j2")
    assert decode_job(stored.encode()) == stored
    article = JobMessage("j3", "a.md", JobOptions(to="en"), text="# hi\n")
    assert decode_job(article.encode()) == article


@pytest.mark.parametrize(
    "change",
    [
        {"text": None},  # neither text nor object
        {"text_object": "o"},  # both
        {"lines": []},
        {"lines": [0]},
        {"lines": ["1"]},
        {"options": {"role": 5, "slot": None}},
        {"format": 2},
        {"options": None},
    ],
)
def test_a_group_that_is_not_one_is_refused(change: dict[str, object]) -> None:
    raw = json.loads(RequestGroup("j", "r", GroupOptions(), (1,), text="x\n").encode())
    raw.update(change)
    with pytest.raises(ValueError):
        decode_job(json.dumps(raw).encode())
    with pytest.raises(ValueError):
        decode_job(b"\xff not json")


def test_result_lines_are_read_back_only_in_their_shape() -> None:
    ok = {
        "custom_id": "a",
        "response": {
            "status_code": 200,
            "body": {"usage": {"prompt_tokens": 3, "completion_tokens": 5}},
        },
        "error": None,
    }
    got = read_result(json.dumps(ok))
    assert got is not None and got.ok and (got.prompt_tokens, got.completion_tokens) == (3, 5)
    err = {"custom_id": "b", "response": None, "error": {"code": "length", "message": "cut"}}
    got = read_result(json.dumps(err))
    assert got is not None and not got.ok
    for bad in (
        {**ok, "custom_id": ""},
        {**ok, "error": {"code": "x", "message": "y"}},  # both
        {**ok, "response": {"status_code": 200, "body": "text"}},
        {**err, "error": {"code": 5, "message": "y"}},
        {"custom_id": "c", "response": None, "error": None},
        [1, 2],
    ):
        assert read_result(json.dumps(bad)) is None, bad
    assert read_result("{torn") is None
