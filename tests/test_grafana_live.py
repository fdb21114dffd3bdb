"""Every panel of the Grafana dashboard, evaluated by a real Prometheus against live data.

A real consumer (``python -m consumer serve``) is fed by a real registry (Debian's docker-registry 2.8.2,
notifications to the consumer) that skopeo pushes to, retags in, pulls from and deletes from. A real
Prometheus (Debian's) scrapes the consumer's /metrics and the registry's debug /metrics, loads the alert
rules, and then answers every panel query (tests/support/dashboard.py, Grafana's variables substituted as
Grafana would) through /api/v1/query: each must parse and return data.

The one exception is spelled out in ``REGISTRY_282_MISSING``: registry 2.8.2 has no Prometheus
notification metrics (distribution 3 has them), so the panels on the registry's queue can only be
checked to parse and to come back empty for that reason, with the same facts read from the registry's
expvar instead.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ConsumerProcess
from tests.support import oci, skopeo
from tests.support.dashboard import PanelQuery, panel_queries
from tests.support.metric_catalogue import REGISTRY_METRICS, metric_names_in
from tests.support.prometheus import PrometheusServer, QueryResult
from tests.support.registry import NotificationEndpoint, RegistryFleet, RegistryServer, bearer_headers

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
ALERT_RULES = ROOT / "config" / "prometheus" / "alerts.yml"
# Long enough to hold every sample of this test's Prometheus, from before the first push to the end.
RATE_WINDOW = "5m"
DEADLINE_SECONDS = 60.0

# The registry series the dashboard uses that Debian's docker-registry 2.8.2 does not export, and why.
REGISTRY_282_MISSING: dict[str, str] = {
    "registry_notifications_pending_total": (
        "distribution 2.8.2 keeps the notification queue length in expvar only (/debug/vars "
        "registry.notifications.endpoints[].Metrics.Pending); the Prometheus gauge arrived in distribution 3"
    ),
    "registry_notifications_events_total": (
        "distribution 2.8.2 counts deliveries in expvar only (Events/Successes/Failures/Errors); the "
        "Prometheus counters arrived in distribution 3"
    ),
}


def registry_282_exception(query: PanelQuery) -> str | None:
    """Why ``query`` cannot return data from a 2.8.2 registry, or None when it must."""
    missing = metric_names_in(query.expr) & set(REGISTRY_282_MISSING)
    return "; ".join(REGISTRY_282_MISSING[name] for name in sorted(missing)) or None


def scalar_values(result: QueryResult) -> list[float]:
    """The sample values of an instant vector (NaN included: Prometheus writes it as "NaN")."""
    return [float(sample["value"][1]) for sample in result.samples]


def consumer_counter(exposition: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name}{labels} is not exposed by the consumer")


async def drive_the_registry(registry: RegistryServer, workdir: Path) -> None:
    """Pushes, a retag, a pull and a delete, all through skopeo and the registry's API."""
    layout = workdir / "layout"
    one, two = oci.write_image(layout, "1"), oci.write_image(layout, "2")
    await skopeo.push(one, registry, "team/app", "1.0.0")
    await skopeo.push(two, registry, "team/app", "1.1.0")
    await skopeo.retag(registry, "team/app", "1.1.0", "latest")
    await skopeo.push(one, registry, "other/app", "0.1.0")
    await skopeo.pull(registry, "team/app", "1.0.0", workdir / "pulled", "1.0.0")
    await registry.delete_manifest("other/app", one.digest)


async def operator_side_traffic(session: aiohttp.ClientSession, consumer: ConsumerProcess) -> None:
    """What happens around the registry in real life: a health checker polls /readyz (the Redis round-trip
    histogram is observed there), a client without a token is refused, a broken envelope is dead-lettered."""
    for _ in range(3):
        async with session.get(f"{consumer.url}/readyz") as resp:
            assert resp.status == 200
    async with session.post(f"{consumer.url}/v1/events", data="{}") as resp:
        assert resp.status == 401
    async with session.post(
        f"{consumer.url}/v1/events", data="{not json",
        headers={"Authorization": f"Bearer {consumer.token}", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["dead_lettered"] == 1


@pytest.fixture
def prometheus(tmp_path: Path, consumer_process: ConsumerProcess, registry: RegistryServer) -> Iterator[PrometheusServer]:
    """Debian's Prometheus scraping the consumer and the registry every second, with the alert rules."""
    scrape_configs = [
        {"job_name": "registry-consumer", "static_configs": [{"targets": [f"127.0.0.1:{consumer_process.port}"]}]},
        {"job_name": "registry", "metrics_path": "/metrics",
         "static_configs": [{"targets": [f"127.0.0.1:{registry.debug_port}"]}]},
    ]
    with PrometheusServer(tmp_path / "prometheus", scrape_configs, rule_files=[ALERT_RULES]) as server:
        yield server


@pytest.fixture
def registry(registries: RegistryFleet, consumer_process: ConsumerProcess) -> RegistryServer:
    endpoint = NotificationEndpoint(f"{consumer_process.url}/v1/events", headers=bearer_headers(consumer_process.token))
    return registries.start(notifications=[endpoint])


async def wait_for(what: str, check: Callable[[], bool], prometheus: PrometheusServer) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus never got there: {what}\ntargets: {prometheus.targets()}\n"
                                 f"{prometheus.log_tail()}")
        await asyncio.sleep(0.2)


async def traffic_seen_by_prometheus(
    consumer: ConsumerProcess, registry: RegistryServer, prometheus: PrometheusServer, workdir: Path
) -> None:
    """Drive everything between scrapes: one of each target before, at least one after all the traffic.

    Rates need a sample from before the traffic: without it every sample holds the final value and every
    rate is 0 (and a latency quantile NaN).
    """

    def scrapes_by_job() -> dict[str, float]:
        counts = prometheus.query(f"count_over_time(up[{RATE_WINDOW}])")
        return {s["metric"]["job"]: float(s["value"][1]) for s in counts.samples}

    await wait_for("a first scrape of both targets",
                   lambda: set(scrapes_by_job()) == {"registry-consumer", "registry"}, prometheus)
    await drive_the_registry(registry, workdir)
    async with aiohttp.ClientSession() as session:
        await operator_side_traffic(session, consumer)
        await registry.wait_notifications_delivered()
        async with session.get(f"{consumer.url}/metrics") as resp:
            exposition = await resp.text()
    final = {
        selector: consumer_counter(exposition, "registry_consumer_events_total", **labels)
        for selector, labels in {
            '{action="push",outcome="applied"}': {"action": "push", "outcome": "applied"},
            '{action="unknown",outcome="dead_lettered"}': {"action": "unknown", "outcome": "dead_lettered"},
        }.items()
    }
    assert all(value > 0 for value in final.values()), final

    def scraped() -> bool:
        by_job = scrapes_by_job()
        latest = {sel: scalar_values(prometheus.query(f"registry_consumer_events_total{sel}")) for sel in final}
        # The index and dead-letter gauges are refreshed by a background loop, a moment after the counters.
        gauges = {name: scalar_values(prometheus.query(f"registry_consumer_{name}"))
                  for name in ("dead_letter_entries", "index_tags")}
        return (
            by_job.get("registry-consumer", 0) >= 2
            and by_job.get("registry", 0) >= 2
            and latest == {sel: [value] for sel, value in final.items()}
            and gauges == {"dead_letter_entries": [1.0], "index_tags": [3.0]}
        )

    await wait_for("two scrapes of both targets, the last after the traffic", scraped, prometheus)
    await wait_for("every alert rule evaluated",
                   lambda: all(r["health"] != "unknown" for r in prometheus.rules()), prometheus)


async def test_every_panel_returns_live_data(
    consumer_process: ConsumerProcess, registry: RegistryServer, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    await traffic_seen_by_prometheus(consumer_process, registry, prometheus, tmp_path)
    targets = {t["labels"]["job"]: t["health"] for t in prometheus.targets()}
    assert targets == {"registry-consumer": "up", "registry": "up"}

    instance = f"127.0.0.1:{consumer_process.port}"
    queries = panel_queries(overrides={"instance": instance, "__rate_interval": RATE_WINDOW})
    results = {(q.panel_title, q.ref_id): prometheus.query(q.expr) for q in queries}
    failures: list[str] = []
    excepted: list[PanelQuery] = []
    for query in queries:
        result = results[(query.panel_title, query.ref_id)]
        where = f"panel {query.panel_id} {query.panel_title!r} {query.ref_id}: {query.expr}"
        if not result.ok:
            failures.append(f"{where}: does not parse/evaluate: {result.error}")
        elif registry_282_exception(query) is not None:
            excepted.append(query)
            if result.samples:
                failures.append(f"{where}: the registry now exports it; drop it from REGISTRY_282_MISSING")
        elif not result.samples:
            failures.append(f"{where}: no data")
    failures += wrong_values(results)
    assert not failures, "\n".join(failures)

    # The exception covers exactly the registry queue panels, and their facts are real, in expvar.
    assert {q.panel_title for q in excepted} == {
        "Registry notification queue", "Registry delivery attempts", "Registry queue length"
    }
    assert set(REGISTRY_282_MISSING) <= set(REGISTRY_METRICS)
    expvar = (await registry.notification_metrics())["consumer"]
    assert expvar["Pending"] == 0 and expvar["Successes"] >= expvar["Events"] > 0
    registry_series = prometheus.query('{job="registry", __name__=~"registry_http_.*"}')
    assert registry_series.samples, "the registry's own debug metrics are scraped (registry_http_*)"

    # The alert rules evaluate against the live series without errors, and nothing is down.
    rules = prometheus.rules()
    assert rules and not [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    firing = {r["name"] for r in rules if r.get("state") == "firing"}
    assert not firing & {"RegistryConsumerDown", "RegistryConsumerMetricsAbsent", "RegistryConsumerNotReady"}


def wrong_values(results: dict[tuple[str, str], QueryResult]) -> list[str]:
    """Not only data: what the core panels show follows from the traffic (non-zero where it happened)."""

    def values(title: str, ref_id: str = "A") -> list[float]:
        return scalar_values(results[(title, ref_id)])

    def by_labels(title: str, ref_id: str = "A") -> dict[str, float]:
        return {json.dumps(s["metric"], sort_keys=True): float(s["value"][1]) for s in results[(title, ref_id)].samples}

    def key(**labels: str) -> str:
        return json.dumps(labels, sort_keys=True)

    checks: list[tuple[str, bool, Any]] = []
    checks.append(("consumer up", values("Consumer up") == [1.0], values("Consumer up")))
    checks.append(("ready", values("Ready") == [1.0], values("Ready")))
    checks.append(("time since last event", values("Time since last event")[0] >= 0, values("Time since last event")))
    events = by_labels("Event rate by action and outcome")
    checks.append(("push events applied", events.get(key(action="push", outcome="applied"), 0) > 0, events))
    checks.append(("delete events applied", events.get(key(action="delete", outcome="applied"), 0) > 0, events))
    checks.append(("dead letters", values("Duplicates and dead letters", "B")[0] > 0,
                   values("Duplicates and dead letters", "B")))
    checks.append(("dead-letter stream", values("Duplicates and dead letters", "C")[0] >= 1,
                   values("Duplicates and dead letters", "C")))
    for title in ("Webhook latency p50 / p99", "Redis round-trip p50 / p99"):
        for ref_id in ("A", "B"):
            got = values(title, ref_id)
            checks.append((f"{title} {ref_id}", len(got) == 1 and math.isfinite(got[0]) and got[0] > 0, got))
    codes = by_labels("Webhook answers by code")
    checks.append(("webhook 200s and 401s", codes.get(key(code="200"), 0) > 0 and codes.get(key(code="401"), 0) > 0,
                   codes))
    reasons = by_labels("Auth failures by reason")
    checks.append(("auth failure: missing token", reasons.get(key(reason="missing"), 0) > 0, reasons))
    checks.append(("index repositories", values("Index size", "A")[0] >= 1, values("Index size", "A")))
    # team/app keeps 1.0.0, 1.1.0 and latest; other/app's only tag went with its manifest.
    checks.append(("index tags", values("Index size", "B") == [3.0], values("Index size", "B")))
    return [f"{what}: got {got}" for what, ok, got in checks if not ok]
