"""Runtimes described once: every consumer derives from ``familiar.config.runtimes.RUNTIMES``, so
adding a runtime (TGI here) is one entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from familiar.config import runtimes
from familiar.config.runtimes import RUNTIMES, RuntimeInfo, provider_name
from familiar.config.slots import SCHEMA_RUNTIMES, Slot
from familiar.fleetcheck import runtime as rt
from familiar.fleetcheck.sweep import IGNORE_EOS_RUNTIMES, Target, Workload
from familiar.telemetry.events import PROVIDERS

REPO = Path(__file__).resolve().parents[2]


def test_the_registry_is_what_the_slots_file_accepts() -> None:
    accepted = Slot.model_fields["runtime"].annotation.__args__  # type: ignore[union-attr]
    assert accepted == tuple(RUNTIMES) == ("vllm", "llama.cpp", "sglang", "ollama", "openai")
    assert Slot(name="a", url="http://h/v1", model="m").runtime == runtimes.DEFAULT == "openai"
    with pytest.raises(ValueError, match=r"'vllm', 'llama\.cpp'"):
        Slot(name="a", url="http://h/v1", model="m", runtime="tgi")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(RUNTIMES))
def test_every_consumer_reads_the_descriptor(name: str) -> None:
    info = RUNTIMES[name]
    assert isinstance(info, RuntimeInfo) and info.name == name
    slot = Slot(name="a", url="http://h/v1", model="m", runtime=name)
    assert slot.supports_json_schema is info.json_schema
    assert (name in SCHEMA_RUNTIMES) is info.json_schema
    assert (name in IGNORE_EOS_RUNTIMES) is info.ignore_eos
    body = json.loads(Workload().body(Target("a", ("http://h/v1",), "m", name), 0))
    assert ("ignore_eos" in body) is info.ignore_eos
    assert PROVIDERS[name] == provider_name(name) == info.provider and "." not in info.provider
    assert rt.load_from_metrics(name, {}) == (None, None)
    if info.version_at is not None:
        assert rt.version_from(name, {info.version_at[1]: "9"}) == "9"
    else:
        assert rt.version_from(name, {"version": "9"}) is None


def test_the_context_window_readers() -> None:
    llama = RUNTIMES["llama.cpp"].context_window
    vllm = RUNTIMES["vllm"].context_window
    assert llama is not None and vllm is not None
    assert (llama.at, llama.path) == ("root", "/props")
    assert llama.read({"default_generation_settings": {"n_ctx": 4096}}, "m") == 4096
    assert (vllm.at, vllm.path) == ("base", "/models")
    models = {"data": [{"id": "m", "max_model_len": 32768}, {"id": "o", "max_model_len": 8}]}
    assert vllm.read(models, "m") == 32768
    assert RUNTIMES["ollama"].context_window is None


#: a whole new runtime, added as one entry before familiar's modules are imported
_TGI = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from types import MappingProxyType

    import familiar.config.runtimes as r

    def max_requests(data):
        return r._positive(data.get("max_concurrent_requests")) if isinstance(data, dict) else None

    r.RUNTIMES = MappingProxyType({**r.RUNTIMES, "tgi": r.RuntimeInfo(
        name="tgi", provider="tgi", health_path="/health", version_at=("/info", "version"),
        capacity=(r.Source("/info", max_requests),),
        load_metrics=("tgi_batch_current_size", "tgi_queue_size"),
    )})

    from familiar.fleetcheck.health import check
    from familiar.fleetcheck.sweep import Target, Workload
    from familiar.config.slots import Slot
    from familiar.telemetry.events import PROVIDERS, provider_name
    from familiar.client.wire import HTTP

    def server(request):
        path = request.url.path
        if path == "/v1/models":
            return HTTP.Response(200, json={"data": [{"id": "m"}]})
        if path == "/health":
            return HTTP.Response(200)
        if path == "/info":
            return HTTP.Response(200, json={"version": "3.3.4", "max_concurrent_requests": 6})
        if path == "/metrics":
            return HTTP.Response(200, text="tgi_batch_current_size 2\\ntgi_queue_size 1\\n")
        if path == "/v1/chat/completions":
            return HTTP.Response(200, json={"choices": [{"finish_reason": "length"}]})
        return HTTP.Response(404)

    slot = Slot(name="t", url="http://h:3000/v1", model="m", runtime="tgi", parallel=6)
    mock = HTTP.MockTransport(server)
    report = asyncio.run(check({"t": slot}, home=Path(sys.argv[1]), transport=mock, timeout_s=5))
    (row,) = report.rows
    body = json.loads(Workload().body(Target("t", slot.url, "m", "tgi"), 0))
    print(json.dumps({
        "ok": row.ok, "health": row.health_endpoint, "version": row.version,
        "server_parallel": row.server_parallel, "load": [row.running, row.waiting],
        "schema": slot.supports_json_schema, "ignore_eos": "ignore_eos" in body,
        "provider": [PROVIDERS["tgi"], provider_name("tgi")],
    }))
    """
)


def test_adding_a_runtime_is_one_entry(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAMILIAR_LEDGER_DIR": str(tmp_path / "l")}
    done = subprocess.run(
        [sys.executable, "-c", _TGI, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "ok": True,
        "health": "/health",
        "version": "3.3.4",
        "server_parallel": 6,
        "load": [2, 1],
        "schema": False,
        "ignore_eos": False,
        "provider": ["tgi", "tgi"],
    }
