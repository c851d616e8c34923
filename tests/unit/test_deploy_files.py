"""Tests for deploy/: the Vector pipeline, the Grafana dashboard and the docs agree.

The Vector config is checked structurally (tomllib), against what Vector 0.57 does when it builds
the components (no Vector binary here; see the header of deploy/vector.toml for the source read):
the source familiar posts to, the wiring, template confinement (no ``{{ field }}`` without literal
text before it), the buffers and acknowledgements, no high-cardinality label, VRL that does not
coalesce (``??``) a field an upstream remap already typed (VRL error E651), and the exact
Prometheus names the ``prometheus_exporter`` sinks will expose (namespace prefix, ``_bucket`` for
histograms). Every metric the dashboard's PromQL uses must be one of those names, and
docs/TELEMETRY.md must name each of them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from familiar.client.backend import CallEvent
from familiar.context import bound_correlation_id
from familiar.telemetry import llm_call_fields, make_event

ROOT = Path(__file__).resolve().parents[2]
VECTOR_TOML = ROOT / "deploy" / "vector.toml"
DASHBOARD = ROOT / "deploy" / "grafana" / "familiar.json"
TELEMETRY_MD = ROOT / "docs" / "TELEMETRY.md"

# Per-request or per-session values: never a metric or Loki label.
HIGH_CARDINALITY = {
    "correlation_id",
    "gen_ai.conversation.id",
    "event_id",
    "span_id",
    "parent_span_id",
    "replica",
    "gen_ai.response.id",
    "ts",
}
# Bucket boundaries the OpenTelemetry GenAI convention gives for gen_ai.client.token.usage.
OTEL_TOKEN_BUCKETS = [4.0**n for n in range(14)]
DISK_BUFFER_MIN = 268435488  # Vector refuses a smaller disk buffer


def _value_for(field: dataclasses.Field[Any]) -> Any:
    known: dict[str, Any] = {
        "slot": "naughty",
        "replica": "http://gpu1:8000/v1",
        "model": "m",
        "runtime": "vllm",
        "role": "naughty",
        "kind": "chat",
        "status": "ok",
        "attempt": 1,
    }
    if field.name in known:
        return known[field.name]
    kind = str(field.type)
    if "bool" in kind:
        return True
    if "float" in kind:
        return 0.25
    if "int" in kind:
        return 3
    return "x"


def sample_llm_call() -> dict[str, Any]:
    """An llm.call event exactly as familiar builds it (whatever fields CallEvent grows)."""
    event = CallEvent(**{f.name: _value_for(f) for f in dataclasses.fields(CallEvent)})
    with bound_correlation_id("c1"):
        return make_event("llm.call", llm_call_fields(event))


@cache
def llm_call_field_names() -> frozenset[str]:
    return frozenset(sample_llm_call())


@cache
def vector() -> dict[str, Any]:
    with VECTOR_TOML.open("rb") as fh:
        return tomllib.load(fh)


@cache
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def components() -> dict[str, dict[str, Any]]:
    cfg = vector()
    out: dict[str, dict[str, Any]] = {}
    for kind in ("sources", "transforms", "sinks"):
        for name, body in cfg.get(kind, {}).items():
            assert name not in out, f"component id {name!r} used twice"
            out[name] = body
    return out


def of_type(kind: str, type_: str) -> dict[str, dict[str, Any]]:
    return {n: b for n, b in vector().get(kind, {}).items() if b["type"] == type_}


def upstream(name: str) -> Iterator[str]:
    """Every component feeding ``name``, transitively (route outputs mapped to the route)."""
    comps = components()
    todo = [i.split(".", 1)[0] for i in comps[name].get("inputs", [])]
    seen: set[str] = set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        yield current
        todo.extend(i.split(".", 1)[0] for i in comps[current].get("inputs", []))


def template_fields(template: str) -> set[str]:
    return {m.strip() for m in re.findall(r"{{(.*?)}}", template)}


def remap_assigned(name: str) -> set[str]:
    """Plain fields assigned (``.field =``) by the remap transforms upstream of ``name``."""
    assigned: set[str] = set()
    for comp in upstream(name):
        body = components()[comp]
        if body["type"] == "remap":
            assigned |= assigned_fields(body["source"])
    return assigned


def assigned_fields(vrl: str) -> set[str]:
    return set(re.findall(r"^\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*=", vrl, re.MULTILINE))


# --- Vector: template confinement ----------------------------------------------------------


def literal_prefix(template: str) -> str:
    """The text Vector renders verbatim before the first field reference or strftime ``%``
    (``Template::literal_prefix`` in src/template.rs)."""
    return re.split(r"{{|%", template, maxsplit=1)[0]


def unconfined(template: str) -> bool:
    """Whether Vector 0.57 refuses ``template`` in a sink: it references an event field but has
    no literal prefix, or only ``/`` (``ConfinementChecker::for_template``)."""
    return bool(template_fields(template)) and literal_prefix(template) in {"", "/"}


@pytest.mark.parametrize(
    ("template", "refused"),
    [
        ("{{ event }}", True),
        ("{{event}}", True),
        ("{{ kubernetes.pod_name }}-x", True),
        ("%Y/{{ host }}", True),
        ("/{{ tenant }}/x", True),
        ("familiar.{{ event }}", False),
        ("logs-{{ topic }}", False),
        ("familiar", False),
        ("", False),
    ],
)
def test_confinement_rule(template: str, refused: bool) -> None:
    assert unconfined(template) is refused


def strings_in(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield f"{where}.{key}", str(key)  # label keys are templates too
            yield from strings_in(inner, f"{where}.{key}")
    elif isinstance(value, list):
        for n, inner in enumerate(value):
            yield from strings_in(inner, f"{where}[{n}]")


def test_no_sink_has_a_template_without_literal_prefix() -> None:
    """Vector 0.57 refuses such a sink when it builds it, and ``vector validate
    --no-environment`` does not notice (vectordotdev/vector#25840)."""
    found = [
        (where, text)
        for name, body in vector()["sinks"].items()
        for where, text in strings_in(body, name)
        if unconfined(text)
    ]
    assert not found, f"unconfined templates (Vector 0.57 refuses to start): {found}"
    for body in vector()["sinks"].values():
        assert "dangerously_allow_unconfined_template_resolution" not in body


def test_the_confinement_check_would_catch_the_old_loki_label() -> None:
    old = {"sinks": {"loki": {"labels": {"service": "familiar", "event": "{{ event }}"}}}}
    assert [t for _, t in strings_in(old, "") if unconfined(t)] == ["{{ event }}"]


def test_config_uses_no_environment_interpolation() -> None:
    """Off by default since Vector 0.57: a ``${VAR}`` would stay literal text."""
    text = "\n".join(
        line for line in VECTOR_TOML.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    assert not re.search(r"\$\{?[A-Z_]+", text)


# --- Vector: source and wiring ---------------------------------------------------------------


def test_http_server_source_listens_on_loopback_at_familiars_default_url() -> None:
    sources = vector()["sources"]
    assert list(sources) == ["familiar"]
    src = sources["familiar"]
    assert src["type"] == "http_server"
    host, _, port = src["address"].rpartition(":")
    assert ipaddress.ip_address(host).is_loopback, "events are accepted from anyone"
    assert port == "8687"
    assert src["path"] == "/telemetry"
    assert src["decoding"]["codec"] == "json"
    # The whole body is one JSON array (one frame); the deprecated `encoding` is refused next to
    # `decoding`/`framing`, and removed after 0.57.
    assert src["framing"]["method"] == "bytes"
    assert "encoding" not in src


def test_remote_senders_are_told_how_to_authenticate() -> None:
    text = VECTOR_TOML.read_text()
    for needle in ('auth.strategy = "basic"', "SECRET[familiar.", "[secret.familiar]"):
        assert needle in text
    assert "FAMILIAR_TELEMETRY_URL=https://familiar:" in text


def test_every_input_names_an_existing_component() -> None:
    comps = components()
    for kind in ("transforms", "sinks"):
        for name, body in vector()[kind].items():
            inputs = body.get("inputs")
            assert inputs, f"{kind}.{name} has no inputs"
            for ref in inputs:
                base, _, output = ref.partition(".")
                assert base in comps, f"{kind}.{name}: unknown input {ref!r}"
                assert base != name, f"{kind}.{name} feeds itself"
                if output:
                    assert comps[base]["type"] == "route", f"{ref!r}: only routes have outputs"
                    assert output in {*comps[base]["route"], "_unmatched"}, ref


def test_every_transform_is_consumed() -> None:
    consumed = {
        ref.split(".", 1)[0]
        for kind in ("transforms", "sinks")
        for body in vector()[kind].values()
        for ref in body["inputs"]
    }
    assert set(vector()["transforms"]) <= consumed
    assert set(vector()["sources"]) <= consumed


def test_remap_programs_read_dotted_fields_with_quoted_paths() -> None:
    sources = "\n".join(b["source"] for b in of_type("transforms", "remap").values())
    for dotted in (
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "server.address",
        "server.port",
        "error.type",
    ):
        assert dotted in llm_call_field_names(), f"familiar does not send {dotted}"
        assert f'."{dotted}"' in sources
    assert not re.search(r"[^\"]\.(gen_ai|server|error)\.[a-z_]+", sources), "unquoted dots nest"


COALESCED = re.compile(r"\b[a-z_]+!?\(\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*\?\?")


def test_vrl_never_coalesces_a_field_already_typed() -> None:
    """A remap compiles against the types its inputs produce: ``string(.x) ?? ...`` on a field
    an earlier line (or an upstream remap) assigned is an infallible expression coalesced, which
    VRL refuses (E651) and Vector with it."""
    for name, body in of_type("transforms", "remap").items():
        typed = remap_assigned(name)
        for line in body["source"].splitlines():
            for field in COALESCED.findall(line):
                assert field not in typed, f"{name}: {line.strip()!r} (E651)"
            typed |= assigned_fields(line)


# --- Vector: metrics -------------------------------------------------------------------------


def metric_configs() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, body in of_type("transforms", "log_to_metric").items():
        assert body["metrics"], name
        for metric in body["metrics"]:
            yield name, metric


def test_only_llm_call_events_feed_metrics() -> None:
    for name in of_type("transforms", "log_to_metric"):
        conditions = [
            components()[c].get("condition", "")
            for c in upstream(name)
            if components()[c]["type"] == "filter"
        ]
        assert any('.event == "llm.call"' in c for c in conditions), name


def test_no_high_cardinality_metric_labels() -> None:
    for transform, metric in metric_configs():
        tags = metric.get("tags", {})
        for key, value in tags.items():
            used = {key} | template_fields(str(value))
            assert not used & HIGH_CARDINALITY, f"{transform}: tag {key}={value!r}"
        assert "correlation_id" not in json.dumps(metric), transform
    for sink in of_type("sinks", "prometheus_exporter").values():
        assert "correlation_id" not in json.dumps(sink)


def test_metric_fields_and_tags_exist_on_the_events() -> None:
    for transform, metric in metric_configs():
        known = llm_call_field_names() | remap_assigned(transform)
        assert metric["field"] in known, f"{transform}: field {metric['field']!r}"
        assert "." not in metric["field"], "dotted names are nested paths: copy them in remap"
        for value in metric.get("tags", {}).values():
            for field in template_fields(str(value)):
                assert field in known, f"{transform}: tag template field {field!r}"


def by_name() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for _, metric in metric_configs():
        out.setdefault(exported_base(metric), []).append(metric)
    return out


def test_request_counters_start_every_status_at_zero() -> None:
    """An isolated error must be an increase of an existing series: one counter per status,
    incremented by 1 for the call's status and 0 for the others."""
    requests = by_name()["familiar_llm_requests_total"]
    assert {m["tags"]["status"] for m in requests} == {"ok", "error", "cancelled"}
    source = vector()["transforms"]["llm_fields"]["source"]
    for metric in requests:
        assert metric["type"] == "counter" and metric["increment_by_value"] is True
        assert set(metric["tags"]) == {"role", "slot", "model", "status"}
        status = metric["tags"]["status"]
        assert f'.{metric["field"]} = if .status == "{status}" {{ 1 }} else {{ 0 }}' in source


def test_metrics_named_by_the_opentelemetry_genai_conventions() -> None:
    metrics = by_name()
    (duration,) = metrics["gen_ai_client_operation_duration_seconds"]
    (ttft,) = metrics["gen_ai_client_operation_time_to_first_chunk_seconds"]
    usage = metrics["gen_ai_client_token_usage"]
    required = {"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"}
    server = {"server_address", "server_port", "gen_ai_response_model"}
    assert required | server | {"error_type"} <= set(duration["tags"])
    assert required | server <= set(ttft["tags"])
    assert {m["tags"]["gen_ai_token_type"] for m in usage} == {"input", "output"}
    for metric in (duration, ttft, *usage):
        assert metric["type"] == "histogram"
        assert required | server <= set(metric["tags"])
    assert duration["field"].endswith("_seconds") and ttft["field"].endswith("_seconds")
    # familiar's own, where the conventions have nothing
    for name in (
        "familiar_llm_queue_wait_seconds",
        "familiar_llm_ledger_wait_seconds",
        "familiar_llm_input_tokens_total",
        "familiar_llm_output_tokens_total",
        "familiar_llm_seats_in_use",
        "familiar_llm_seats_capacity",
    ):
        assert name in metrics, name
    (ledger,) = metrics["familiar_llm_ledger_wait_seconds"]
    assert ledger["type"] == "histogram" and ledger["field"] == "ledger_wait_seconds"
    for tokens in ("familiar_llm_input_tokens_total", "familiar_llm_output_tokens_total"):
        (counter,) = metrics[tokens]
        assert counter["type"] == "counter" and counter["increment_by_value"] is True
    (seats,) = metrics["familiar_llm_seats_in_use"]
    assert seats["type"] == "gauge" and set(seats["tags"]) == {"slot"}


def exporter_of(transform: str) -> dict[str, Any]:
    (sink,) = [
        s
        for s in of_type("sinks", "prometheus_exporter").values()
        if transform in {ref.split(".", 1)[0] for ref in s["inputs"]}
    ]
    return sink


def exported_base(metric: dict[str, Any], transform: str | None = None) -> str:
    """The name prometheus_exporter gives a log_to_metric metric (before any suffix)."""
    if transform is None:
        transform = next(t for t, m in metric_configs() if m is metric)
    sink = exporter_of(transform)
    name = metric.get("name") or metric["field"]
    namespace = metric.get("namespace") or sink.get("default_namespace")
    return f"{namespace}_{name}" if namespace else name


def exported_series() -> dict[str, str]:
    """Every series name the Prometheus sinks expose -> its metric type."""
    series: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for transform, metric in metric_configs():
        base, kind = exported_base(metric, transform), metric["type"]
        if kind == "histogram":
            names = [f"{base}_bucket", f"{base}_sum", f"{base}_count"]
        elif kind == "summary":
            names = [base, f"{base}_sum", f"{base}_count"]
        else:
            names = [base]
        tagset = json.dumps(metric.get("tags", {}), sort_keys=True)
        assert (base, tagset) not in seen, f"{base} defined twice with the same labels"
        seen.add((base, tagset))
        for name in names:
            assert series.get(name, kind) == kind, f"{name}: two types"
            series[name] = kind
    return series


def test_every_log_to_metric_feeds_exactly_one_exporter_on_loopback() -> None:
    exporters = of_type("sinks", "prometheus_exporter")
    feeding = [ref.split(".", 1)[0] for s in exporters.values() for ref in s["inputs"]]
    assert sorted(feeding) == sorted(of_type("transforms", "log_to_metric"))
    addresses = [s["address"] for s in exporters.values()]
    assert len(set(addresses)) == len(addresses)
    for address in addresses:
        assert ipaddress.ip_address(address.rpartition(":")[0]).is_loopback, address


def test_histogram_buckets_fit_what_they_measure() -> None:
    for transform, metric in metric_configs():
        if metric["type"] != "histogram":
            continue
        buckets = exporter_of(transform)["buckets"]
        assert buckets == sorted(set(buckets)), "buckets must rise"
        if exported_base(metric, transform) == "gen_ai_client_token_usage":
            assert buckets == OTEL_TOKEN_BUCKETS
            continue
        # seconds: a 3 ms seat wait lands in a bucket ending at 5 ms or less, not at 10 ms
        assert metric["field"].endswith("_seconds")
        assert min(b for b in buckets if b >= 0.003) <= 0.005
        assert buckets[0] <= 0.001 and buckets[-1] >= 600
        assert len([b for b in buckets if 0.025 <= b <= 1.0]) >= 8, "TTFT needs resolution"


def test_exporters_keep_sparse_series() -> None:
    """A series the exporter forgot restarts without a previous sample: its first increment
    is invisible to rate(). Quiet spells of days must not make it forget."""
    for name, sink in of_type("sinks", "prometheus_exporter").items():
        assert sink["flush_period_secs"] >= 7 * 86400, name
        assert sink["suppress_timestamp"] is True, name


# --- Vector: Loki ----------------------------------------------------------------------------


def documented_events() -> set[str]:
    text = TELEMETRY_MD.read_text(encoding="utf-8")
    table = text.split("Events and their own fields:", 1)[1].split("\n\n", 2)[1]
    return set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", table, re.MULTILINE))


def test_loki_sink_gets_every_event_with_bounded_confined_labels() -> None:
    loki = vector()["sinks"]["loki"]
    assert loki["type"] == "loki"
    assert loki["endpoint"] == "http://127.0.0.1:3100"
    assert loki["encoding"]["codec"] == "json"
    assert loki["labels"] == {"service": "familiar", "event": "familiar.{{ loki_event }}"}
    assert loki["remove_label_fields"] is True  # the helper field stays out of the line
    for key, value in loki["labels"].items():
        assert not ({key} | template_fields(value)) & HIGH_CARDINALITY, key
    assert loki["out_of_order_action"] in {"accept", "drop", "rewrite_timestamp"}
    # Loki sees every event, not only the llm.call ones that feed metrics.
    assert not any(components()[c]["type"] == "filter" for c in upstream("loki"))


def test_loki_event_label_takes_its_values_from_a_fixed_list() -> None:
    """The source accepts anything that reaches it: a label value taken as sent would let a
    sender create a Loki stream per request."""
    source = vector()["transforms"]["loki_events"]["source"]
    listed = set(re.findall(r'"([a-z_]+\.[a-z_]+)"', source.split("]", 1)[0]))
    assert documented_events() <= listed
    assert {"llm.call", "session.start", "batch.end"} <= listed
    assert '.loki_event = if includes(known, .event) { .event } else { "other" }' in source


def test_a_loki_outage_cannot_stall_the_metrics() -> None:
    """Sinks share familiar_dedupe: a sink whose buffer blocks when full would stop it, and
    the metrics with it. Loki's events wait on disk and are dropped, for Loki alone, past it."""
    loki = vector()["sinks"]["loki"]
    assert loki["buffer"]["type"] == "disk"
    assert loki["buffer"]["when_full"] == "drop_newest"
    assert loki["buffer"]["max_size"] >= DISK_BUFFER_MIN
    shared = set(upstream("loki")) & set(upstream("prometheus"))
    assert "familiar_dedupe" in shared
    for name, sink in vector()["sinks"].items():
        if sink["type"] != "prometheus_exporter":  # exporters only update memory: never stall
            assert sink.get("buffer", {}).get("when_full", "block") != "block", name


def test_acknowledgements_where_they_buy_delivery() -> None:
    """familiar's POST is answered once its events are safe in Loki's disk buffer: a Vector
    that stops before that makes familiar keep them in its spill file."""
    sinks = vector()["sinks"]
    assert sinks["loki"]["acknowledgements"]["enabled"] is True
    for name in of_type("sinks", "prometheus_exporter"):
        assert "acknowledgements" not in sinks[name], f"{name}: acknowledges at once anyway"


# --- Grafana ---------------------------------------------------------------------------------

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or
    labels (label matchers, ranges and by/without lists are removed first)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"{[^}]*}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        word = match.group()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_promql_parser_finds_metric_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, slot) (rate(a_b_bucket{status="x"}[5m]))) '
        "/ on(slot) max without (role) (c_total) and on (slot) d_total > 0"
    )
    assert promql_metric_names(expr) == {"a_b_bucket", "c_total", "d_total"}


def panels() -> list[dict[str, Any]]:
    return list(dashboard()["panels"])


def prom_targets() -> Iterator[tuple[dict[str, Any], str]]:
    for panel in panels():
        for target in panel.get("targets", []):
            ds = target.get("datasource") or panel.get("datasource") or {}
            if ds.get("type") == "prometheus":
                yield panel, target["expr"]


def test_dashboard_metric_names_are_all_exported_by_vector() -> None:
    series = exported_series()
    used: set[str] = set()
    for panel, expr in prom_targets():
        names = promql_metric_names(expr)
        assert names, f"{panel['title']}: no metric in {expr!r}"
        unknown = names - set(series)
        assert not unknown, f"{panel['title']}: {sorted(unknown)} not produced by vector.toml"
        if "histogram_quantile(" in expr:
            for name in names:
                assert name.endswith("_bucket") and series[name] == "histogram", expr
                assert "le" in re.findall(r"by \(([^)]*)\)", expr)[0].replace(" ", "").split(",")
        used |= names
    assert used, "the dashboard queries no Prometheus metric"


def test_rates_use_grafanas_rate_interval() -> None:
    """A fixed [1m] is shorter than 4 scrapes at a 15 s interval and breaks at other ones."""
    for panel, expr in prom_targets():
        ranges = re.findall(r"\[([^\]]*)\]", expr)
        for window in ranges:
            assert window == "$__rate_interval", f"{panel['title']}: [{window}] in {expr}"
        if re.search(r"\b(rate|increase)\(", expr):
            assert ranges, expr


def test_dashboard_identity_and_variables() -> None:
    d = dashboard()
    assert d["uid"] == "familiar"
    assert 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    datasource_vars = {
        v["query"]: name for name, v in variables.items() if v["type"] == "datasource"
    }
    assert set(datasource_vars) == {"prometheus", "loki"}
    assert variables["correlation_id"]["type"] == "textbox"
    for panel in panels():
        ds = panel["datasource"]
        assert ds["uid"] == "${" + datasource_vars[ds["type"]] + "}", panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == ds, panel["title"]
    for name, label in (("role", "role"), ("slot", "slot"), ("model", "model")):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"]["type"] == "prometheus"
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"
        match = re.fullmatch(r"label_values\((\w+)(?:{.*})?, (\w+)\)", var["definition"])
        assert match, var["definition"]
        metric, wanted = match.groups()
        assert wanted == label and metric in exported_series(), var["definition"]
        assert var["query"]["query"] == var["definition"]


def test_every_metric_panel_follows_the_variables() -> None:
    for panel, expr in prom_targets():
        assert '=~"$slot"' in expr, f"{panel['title']}: {expr}"
        names = promql_metric_names(expr)
        if any(n.startswith(("familiar_llm_requests", "familiar_llm_input")) for n in names):
            assert '=~"$role"' in expr and 'model=~"$model"' in expr, expr
        if any(n.startswith("gen_ai_") for n in names):
            assert 'gen_ai_request_model=~"$model"' in expr and '=~"$role"' in expr, expr


def test_latency_quantiles_count_successful_calls_only() -> None:
    quantiles = [
        expr
        for _, expr in prom_targets()
        if "gen_ai_client_operation_duration_seconds_bucket" in expr
    ]
    assert len(quantiles) == 2
    for expr in quantiles:
        assert 'error_type=""' in expr, expr


def test_dashboard_layout() -> None:
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0


def find_panel(*needles: str) -> dict[str, Any]:
    found = [
        p
        for p in panels()
        if all(any(n in t.get("expr", "") for t in p.get("targets", [])) for n in needles)
    ]
    assert found, f"no panel whose queries contain all of {needles}"
    return found[0]


@pytest.mark.parametrize(
    "needles",
    [
        ("rate(familiar_llm_requests_total{", "by (role, slot)"),
        ('familiar_llm_requests_total{status="error"', "rate("),
        (
            "histogram_quantile(0.5,",
            "histogram_quantile(0.99,",
            "gen_ai_client_operation_duration_seconds",
        ),
        (
            "histogram_quantile(0.5,",
            "histogram_quantile(0.99,",
            "gen_ai_client_operation_time_to_first_chunk_seconds",
        ),
        ("rate(familiar_llm_output_tokens_total", "by (role, slot)"),
        ("gen_ai_client_token_usage_bucket", "gen_ai_token_type"),
        ("familiar_llm_seats_in_use", "by (slot)", "familiar_llm_seats_capacity"),
        ("familiar_llm_queue_wait_seconds_bucket", "familiar_llm_ledger_wait_seconds_bucket"),
    ],
)
def test_dashboard_has_the_metric_panels(needles: tuple[str, ...]) -> None:
    assert find_panel(*needles)["type"] == "timeseries"


def interpolate(expr: str, correlation_id: str) -> str:
    """What Grafana sends for a textbox value (``:regex`` escapes regex characters)."""
    return expr.replace("${correlation_id:regex}", re.escape(correlation_id)).replace(
        "$correlation_id", correlation_id
    )


def test_dashboard_has_the_correlation_logs_panel() -> None:
    logs = [p for p in panels() if p["type"] == "logs"]
    assert len(logs) == 1
    (panel,) = logs
    assert panel["datasource"]["type"] == "loki"
    (target,) = panel["targets"]
    expr = target["expr"]
    # The stream selector uses only labels the Loki sink really sets.
    selector = dict(re.findall(r'(\w+)="([^"]*)"', expr.split("}", 1)[0]))
    assert selector == {"service": vector()["sinks"]["loki"]["labels"]["service"]}
    # An empty box shows every session's events; it never asks for correlation_id="".
    empty = interpolate(expr, "")
    assert 'correlation_id=""' not in empty and "correlation_id=``" not in empty
    assert "correlation_id=~`.*`" in empty
    one = interpolate(expr, "0190c1d2e3f4")
    assert "|= `0190c1d2e3f4`" in one and "correlation_id=~`0190c1d2e3f4.*`" in one


# --- docs ------------------------------------------------------------------------------------


def test_docs_name_every_exported_metric_and_the_addresses() -> None:
    text = TELEMETRY_MD.read_text(encoding="utf-8")
    bases = {re.sub(r"_(bucket|sum|count)$", "", s) for s in exported_series()}
    for base in sorted(bases):
        assert f"`{base}`" in text, f"docs/TELEMETRY.md does not name {base}"
    for sink in (*vector()["sources"].values(), *of_type("sinks", "prometheus_exporter").values()):
        assert sink["address"] in text, sink["address"]
    assert "0.0.0.0:8687" not in text.split("## Running the stack", 1)[1].split("```")[0]


def test_docs_map_every_llm_call_field() -> None:
    text = TELEMETRY_MD.read_text(encoding="utf-8")
    for field in sorted(llm_call_field_names()):
        assert f"`{field}`" in text, f"docs/TELEMETRY.md does not describe {field}"
