"""Every runtime familiar knows, described once (pure, no I/O).

A slot's ``runtime`` names one :class:`RuntimeInfo` of :data:`RUNTIMES`; everything that
differs between servers is read from it: the health endpoint, where capacity, load and
the version are found, whether JSON-schema constrained decoding and ``ignore_eos`` are
honoured, where the context window is reported, the OTel ``gen_ai.provider.name``.
Adding a runtime is one entry here (plus its tests): the slots file accepts it
(``slots.Runtime``), ``familiar health``/``bench`` probe it, sessions constrain its
answers, telemetry names it.

=========  ==================  ======================================  ====================
runtime    health              capacity / load                         version
=========  ==================  ======================================  ====================
llama.cpp  ``/health``         ``/props`` ``total_slots`` (else        ``/props``
                               ``/slots``); ``llamacpp:requests_*``    ``build_info``
vllm       ``/health``         ``vllm:num_requests_running|waiting``   ``/version``
sglang     ``/health``         ``/get_server_info``                    ``/get_server_info``
                               ``max_running_requests``;
                               ``sglang:num_running_reqs|queue_reqs``
ollama     ``/api/tags``       (not exposed)                           ``/api/version``
openai     (none)              (none)                                  (none)
=========  ==================  ======================================  ====================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal


def root_url(base: str) -> str:
    """The server root of an OpenAI base URL: ``http://h:8000/v1`` -> ``http://h:8000``."""
    base = base.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def _positive(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def slots_from_props(data: Any) -> int | None:
    """llama-server's ``total_slots`` (its ``--parallel``) from ``/props``."""
    return _positive(data.get("total_slots")) if isinstance(data, dict) else None


def slots_from_slots(data: Any) -> int | None:
    """llama-server's slot count from ``/slots`` (a list, one object per slot)."""
    return len(data) if isinstance(data, list) and data else None


def slots_from_server_info(data: Any) -> int | None:
    """SGLang's ``max_running_requests`` from ``/get_server_info``."""
    return _positive(data.get("max_running_requests")) if isinstance(data, dict) else None


def window_from_props(data: Any, model: str) -> int | None:
    """llama-server's context of one slot: ``/props`` ``default_generation_settings.n_ctx``."""
    if not isinstance(data, dict):
        return None
    settings = data.get("default_generation_settings")
    return _positive(settings.get("n_ctx")) if isinstance(settings, dict) else None


def window_from_models(data: Any, model: str) -> int | None:
    """vLLM's and SGLang's ``max_model_len`` of ``model`` in ``/v1/models`` (the only
    model's when one is served)."""
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list):
        return None
    lengths = [
        _positive(m.get("max_model_len"))
        for m in models
        if isinstance(m, dict) and (m.get("id") == model or len(models) == 1)
    ]
    found = [n for n in lengths if n is not None]
    return min(found) if found else None


@dataclass(frozen=True)
class Source:
    """A number a server reports: GET ``path`` and read it with ``read``. ``at``: the
    path hangs off the server root (``http://h:8000``) or the OpenAI base (``.../v1``)."""

    path: str
    read: Callable[..., int | None]
    at: Literal["root", "base"] = "root"


@dataclass(frozen=True)
class RuntimeInfo:
    """What one runtime says about itself, and where."""

    name: str
    #: OTel ``gen_ai.provider.name``: ``openai`` is the convention's well-known value; the
    #: self-hosted servers have none, so they get their own (no dots: the convention reads
    #: them as namespaces)
    provider: str
    #: its own health endpoint at the server root (None: it has none)
    health_path: str | None = None
    #: where the version is: (path at the root, JSON key)
    version_at: tuple[str, str] | None = None
    #: how many requests it serves at once, tried in order (first answer wins)
    capacity: tuple[Source, ...] = ()
    #: the Prometheus gauges (at ``/metrics``) of requests running and waiting
    load_metrics: tuple[str, str] | None = None
    #: honours ``response_format`` with ``json_schema`` (constrained decoding)
    json_schema: bool = False
    #: takes ``ignore_eos`` (every answer exactly ``max_tokens`` long: the bench)
    ignore_eos: bool = False
    #: where the context window of one request is reported (reader: ``(data, model)``)
    context_window: Source | None = None


_LLAMA_CPP = RuntimeInfo(
    name="llama.cpp",
    provider="llama_cpp",
    health_path="/health",
    version_at=("/props", "build_info"),
    capacity=(Source("/props", slots_from_props), Source("/slots", slots_from_slots)),
    load_metrics=("llamacpp:requests_processing", "llamacpp:requests_deferred"),
    json_schema=True,
    ignore_eos=True,
    context_window=Source("/props", window_from_props),
)
_VLLM = RuntimeInfo(
    name="vllm",
    provider="vllm",
    health_path="/health",
    version_at=("/version", "version"),
    load_metrics=("vllm:num_requests_running", "vllm:num_requests_waiting"),
    json_schema=True,
    ignore_eos=True,
    context_window=Source("/models", window_from_models, at="base"),
)
_SGLANG = RuntimeInfo(
    name="sglang",
    provider="sglang",
    health_path="/health",
    version_at=("/get_server_info", "version"),
    capacity=(Source("/get_server_info", slots_from_server_info),),
    load_metrics=("sglang:num_running_reqs", "sglang:num_queue_reqs"),
    json_schema=True,
    ignore_eos=True,
    context_window=Source("/models", window_from_models, at="base"),
)
_OLLAMA = RuntimeInfo(
    name="ollama",
    provider="ollama",
    health_path="/api/tags",
    version_at=("/api/version", "version"),
)
#: any other OpenAI-compatible endpoint: it says nothing about itself
_OPENAI = RuntimeInfo(name="openai", provider="openai", json_schema=True)

#: every runtime a slot may name, in the order the docs list them
RUNTIMES: Mapping[str, RuntimeInfo] = MappingProxyType(
    {r.name: r for r in (_VLLM, _LLAMA_CPP, _SGLANG, _OLLAMA, _OPENAI)}
)
#: a slot that names no runtime
DEFAULT = "openai"
#: what serves an ``embedded`` slot: llama-server (``familiar.local``)
EMBEDDED_RUNTIME = "llama.cpp"


def runtime(name: str) -> RuntimeInfo | None:
    """The descriptor of ``name`` (None for a name no slot file can carry)."""
    return RUNTIMES.get(name)


def provider_name(name: str) -> str:
    """``gen_ai.provider.name`` of a runtime (one familiar does not know: its name with
    the dots replaced)."""
    info = RUNTIMES.get(name)
    return info.provider if info is not None else name.replace(".", "_")
