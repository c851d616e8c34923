"""Tests for deploy/: the Vector pipeline and the Grafana dashboard agree with each other.

The Vector config is checked structurally (tomllib): the source familiar posts to, the wiring of
every component, no high-cardinality label, and the exact Prometheus names the
``prometheus_exporter`` sink will expose (namespace prefix, ``_bucket`` for histograms). Every
metric the dashboard's PromQL uses must be one of those names.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
VECTOR_TOML = ROOT / "deploy" / "vector.toml"
DASHBOARD = ROOT / "deploy" / "grafana" / "familiar.json"

# Fields of an llm.call event as familiar sends it (docs/TELEMETRY.md).
LLM_CALL_FIELDS = {
    "event_id",
    "ts",
    "event",
    "correlation_id",
    "span_id",
    "parent_span_id",
    "service",
    "version",
    "host",
    "role",
    "slot",
    "replica",
    "runtime",
    "gen_ai.operation.name",
    "gen_ai.request.model",
    "status",
    "error.type",
    "http.response.status_code",
    "latency_ms",
    "ttft_ms",
    "queue_wait_ms",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.response.finish_reasons",
    "attempt",
    "seats_in_use",
    "seats_total",
}
# Per-request or per-session values: never a metric or Loki label.
HIGH_CARDINALITY = {"correlation_id", "event_id", "span_id", "parent_span_id", "replica", "ts"}


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
            assigned |= set(
                re.findall(r"^\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*=", body["source"], re.MULTILINE)
            )
    return assigned


# --- Vector: source and wiring ---------------------------------------------------------------


def test_http_server_source_matches_familiars_default_url() -> None:
    sources = vector()["sources"]
    assert list(sources) == ["familiar"]
    src = sources["familiar"]
    assert src["type"] == "http_server"
    assert src["address"] == "0.0.0.0:8687"
    assert src["path"] == "/telemetry"
    assert src["decoding"]["codec"] == "json"
    # The whole body is one JSON array (one frame), like the legacy `encoding = "json"`,
    # which Vector refuses next to `decoding`/`framing`.
    assert src["framing"]["method"] == "bytes"
    assert "encoding" not in src


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
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
    ):
        assert f'."{dotted}"' in sources


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
    assert "correlation_id" not in json.dumps(vector()["sinks"]["prometheus"])


def test_metric_fields_and_tags_exist_on_the_events() -> None:
    for transform, metric in metric_configs():
        known = LLM_CALL_FIELDS | remap_assigned(transform)
        assert metric["field"] in known, f"{transform}: field {metric['field']!r}"
        assert "." not in metric["field"], "dotted names are nested paths: copy them in remap"
        for value in metric.get("tags", {}).values():
            for field in template_fields(str(value)):
                assert field in known, f"{transform}: tag template field {field!r}"


def test_metrics_named_as_the_brief_says() -> None:
    by_name = {exported_base(m): m for _, m in metric_configs()}
    requests = by_name["familiar_llm_requests_total"]
    assert requests["type"] == "counter"
    assert set(requests["tags"]) == {"role", "slot", "model", "status"}
    for hist in ("familiar_llm_latency_seconds", "familiar_llm_ttft_seconds"):
        assert by_name[hist]["type"] == "histogram"
        assert by_name[hist]["field"].endswith("_seconds")
    for tokens in ("familiar_llm_input_tokens_total", "familiar_llm_output_tokens_total"):
        assert by_name[tokens]["type"] == "counter"
        assert by_name[tokens]["increment_by_value"] is True
    seats = by_name["familiar_llm_seats_in_use"]
    assert seats["type"] == "gauge"
    assert set(seats["tags"]) == {"slot"}


def exported_base(metric: dict[str, Any]) -> str:
    """The name prometheus_exporter gives a log_to_metric metric (before any suffix)."""
    sink = vector()["sinks"]["prometheus"]
    name = metric.get("name") or metric["field"]
    namespace = metric.get("namespace") or sink.get("default_namespace")
    return f"{namespace}_{name}" if namespace else name


def exported_series() -> dict[str, str]:
    """Every series name the Prometheus sink exposes -> its metric type."""
    sink = vector()["sinks"]["prometheus"]
    assert sink["type"] == "prometheus_exporter"
    assert sink["address"] == "0.0.0.0:9598"
    feeding = {ref.split(".", 1)[0] for ref in sink["inputs"]}
    series: dict[str, str] = {}
    for transform, metric in metric_configs():
        if transform not in feeding:
            continue
        base, kind = exported_base(metric), metric["type"]
        if kind == "histogram":
            names = [f"{base}_bucket", f"{base}_sum", f"{base}_count"]
        elif kind == "summary":
            names = [base, f"{base}_sum", f"{base}_count"]
        else:
            names = [base]
        for name in names:
            assert name not in series, f"{name} defined twice"
            series[name] = kind
    return series


def test_prometheus_sink_is_fed_by_every_log_to_metric() -> None:
    feeding = {ref.split(".", 1)[0] for ref in vector()["sinks"]["prometheus"]["inputs"]}
    assert feeding == set(of_type("transforms", "log_to_metric"))


# --- Vector: Loki ----------------------------------------------------------------------------


def test_loki_sink_gets_every_event_with_low_cardinality_labels() -> None:
    loki = vector()["sinks"]["loki"]
    assert loki["type"] == "loki"
    assert loki["endpoint"] == "http://127.0.0.1:3100"
    assert loki["encoding"]["codec"] == "json"
    assert loki["labels"]["service"] == "familiar"
    assert set(loki["labels"]) <= {"service", "event", "host", "version"}
    for key, value in loki["labels"].items():
        assert not ({key} | template_fields(value)) & HIGH_CARDINALITY, key
    assert loki["out_of_order_action"] in {"accept", "drop", "rewrite_timestamp"}
    # Loki sees every event, not only the llm.call ones that feed metrics.
    assert not any(components()[c]["type"] == "filter" for c in upstream("loki"))


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
        "/ on(slot) max without (role) (c_total)"
    )
    assert promql_metric_names(expr) == {"a_b_bucket", "c_total"}


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
        ("rate(familiar_llm_requests_total[1m])", "by (role, slot)"),
        ('familiar_llm_requests_total{status="error"}', "rate("),
        ("histogram_quantile(0.5,", "histogram_quantile(0.99,", "familiar_llm_latency_seconds"),
        ("histogram_quantile(0.5,", "histogram_quantile(0.99,", "familiar_llm_ttft_seconds"),
        ("rate(familiar_llm_output_tokens_total", "by (role, slot)"),
        ("familiar_llm_seats_in_use", "by (slot)"),
    ],
)
def test_dashboard_has_the_metric_panels(needles: tuple[str, ...]) -> None:
    assert find_panel(*needles)["type"] == "timeseries"


def test_dashboard_has_the_correlation_logs_panel() -> None:
    logs = [p for p in panels() if p["type"] == "logs"]
    assert len(logs) == 1
    (panel,) = logs
    assert panel["datasource"]["type"] == "loki"
    (target,) = panel["targets"]
    assert target["expr"] == '{service="familiar"} | json | correlation_id="$correlation_id"'
    # The stream selector uses a label the Loki sink really sets.
    assert vector()["sinks"]["loki"]["labels"]["service"] == "familiar"
