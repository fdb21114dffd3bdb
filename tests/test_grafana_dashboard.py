"""The Grafana provisioning and dashboard in config/grafana/, checked statically and against a real Prometheus.

Static: the JSON loads, every panel has queries on the provisioned datasource, every query names only
catalogued metrics, and the operators' topics each have a panel. Parse: every panel query, with Grafana's
variables substituted as Grafana would, is evaluated by Debian's Prometheus through /api/v1/query; a query that
does not parse answers 400 there. (The live test, against a consumer fed by a real registry, reuses
tests.support.dashboard.panel_queries and tests.support.prometheus.PrometheusServer.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support.dashboard import (
    DATASOURCES,
    ROOT,
    PanelQuery,
    UnknownVariableError,
    iter_panels,
    load_dashboard,
    panel_queries,
    substitute,
)
from tests.support.metric_catalogue import CONSUMER_METRICS, CONSUMER_PREFIX, metric_names_in, series_names
from tests.support.prometheus import PrometheusServer

DASHBOARD_PROVIDERS = ROOT / "config" / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"


def provisioned_datasource() -> dict[str, Any]:
    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(datasources) == 1
    datasource: dict[str, Any] = datasources[0]
    return datasource


def content_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in iter_panels(dashboard) if p.get("type") != "row"]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus that scrapes nothing: enough to parse and evaluate any query."""
    with PrometheusServer(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


def test_dashboard_json_loads_with_a_stable_uid() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "registry-consumer"
    assert dashboard["title"]
    ids = [panel["id"] for panel in iter_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_datasource_provisioning_has_the_uid_the_panels_use() -> None:
    datasource = provisioned_datasource()
    assert datasource["type"] == "prometheus"
    dashboard = load_dashboard()
    panels = content_panels(dashboard)
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
    for query in panel_queries(dashboard):
        assert query.datasource_uid == datasource["uid"], query.panel_title
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == datasource["uid"], variable["name"]


def test_dashboard_provider_points_at_a_directory() -> None:
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"]
    assert providers[0]["options"]["path"].startswith("/")


def test_every_panel_has_queries() -> None:
    for panel in content_panels(load_dashboard()):
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no targets"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"panel {panel['title']!r} repeats a refId"
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r} has an empty query"


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in iter_panels(load_dashboard()):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells


def test_queries_only_use_catalogued_metrics() -> None:
    known = series_names()
    for query in panel_queries():
        used = metric_names_in(query.expr)
        assert used, f"{query.panel_title}/{query.ref_id}: no metric in {query.expr!r}"
        assert used <= known, f"{query.panel_title}/{query.ref_id} uses uncatalogued {used - known}"


@pytest.mark.parametrize(
    ("topic", "needles"),
    [
        ("event rate by action and outcome", ["events_total", "by (action, outcome)"]),
        ("webhook latency p50", ["histogram_quantile(0.5,", "webhook_request_duration_seconds_bucket"]),
        ("webhook latency p99", ["histogram_quantile(0.99,", "webhook_request_duration_seconds_bucket"]),
        ("duplicates", ['outcome="duplicate"']),
        ("dead letters", ['outcome="dead_lettered"']),
        ("dead-letter stream", ["dead_letter_entries"]),
        ("index repositories", ["index_repositories"]),
        ("index tags", ["index_tags"]),
        ("retention planned", ["retention_deletions_total", 'mode="dry_run"']),
        ("retention deleted", ["retention_deletions_total", 'mode="enforced"']),
        ("unexpected deletions", ["unexpected_deletions_total"]),
        ("stale latest", ["latest_stale_repositories"]),
        ("revocations", ["token_revocations_total"]),
        ("auth failures", ["auth_failures_total", "by (reason)"]),
        ("reconciliation drift", ["reconcile_drift_total"]),
        ("redis errors", ["redis_errors_total"]),
        ("redis round-trip", ["redis_roundtrip_seconds_bucket"]),
        ("registry queue", ["registry_notifications_pending_total"]),
    ],
)
def test_operators_topic_has_a_panel(topic: str, needles: list[str]) -> None:
    exprs = [q.expr for q in panel_queries()]
    assert any(all(needle in expr for needle in needles) for expr in exprs), f"no panel query for {topic}"


def test_every_consumer_metric_appears_on_the_dashboard() -> None:
    """A metric nobody can see is a metric nobody watches."""
    exprs = " ".join(q.expr for q in panel_queries())
    missing = [
        name
        for name, kind in CONSUMER_METRICS.items()
        if CONSUMER_PREFIX + name + ("_bucket" if kind == "histogram" else "") not in exprs
    ]
    assert not missing, f"not on the dashboard: {missing}"


def test_variables_are_substituted_and_unknown_ones_refused() -> None:
    for query in panel_queries():
        assert "$" not in query.expr and "[[" not in query.expr, query.expr
    assert substitute("rate(x[$__rate_interval])", {"__rate_interval": "2m"}) == "rate(x[2m])"
    assert substitute('x{i=~"${instance:regex}"}', {"instance": ".*"}) == 'x{i=~".*"}'
    with pytest.raises(UnknownVariableError):
        substitute("rate(x[$nope])", {})


def test_live_overrides_reach_the_queries() -> None:
    queries = panel_queries(overrides={"instance": "127.0.0.1:18080", "__rate_interval": "30s"})
    instance_filtered = [q for q in queries if "instance=~" in q.expr]
    assert instance_filtered
    assert all('instance=~"127.0.0.1:18080"' in q.expr for q in instance_filtered)
    assert all("[1m]" not in q.expr for q in queries)


def test_prometheus_refuses_a_query_that_does_not_parse(prometheus: PrometheusServer) -> None:
    """The harness' negative control: a parse error is a 400 bad_data, not an empty success."""
    result = prometheus.query("sum by (le (rate(registry_consumer_events_total[1m]))")
    assert result.http_status == 400
    assert result.body["errorType"] == "bad_data"
    unsubstituted = prometheus.query("rate(registry_consumer_events_total[$__rate_interval])")
    assert unsubstituted.http_status == 400


@pytest.mark.parametrize(
    "query", panel_queries(), ids=lambda q: f"{q.panel_id}-{q.ref_id}-{q.panel_title}"
)
def test_panel_query_parses_in_prometheus(prometheus: PrometheusServer, query: PanelQuery) -> None:
    result = prometheus.query(query.expr)
    assert result.ok, f"{query.panel_title}/{query.ref_id}: {result.error}\n{query.expr}"
