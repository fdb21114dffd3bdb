"""The metric names the operators' bundle (alerts, dashboard) may refer to.

The consumer's names are the catalogue in the README (the contract consumer/metrics.py implements); the
registry's are what distribution v3 exports on its debug server. An alert or panel that names anything else
would silently match nothing, so the tests compare every expression against this list.
"""

from __future__ import annotations

import re

CONSUMER_PREFIX = "registry_consumer_"

# name (without prefix) -> Prometheus type
CONSUMER_METRICS: dict[str, str] = {
    "events_total": "counter",
    "webhook_requests_total": "counter",
    "webhook_request_duration_seconds": "histogram",
    "redis_errors_total": "counter",
    "redis_roundtrip_seconds": "histogram",
    "ready": "gauge",
    "auth_failures_total": "counter",
    "index_repositories": "gauge",
    "index_tags": "gauge",
    "listener_backlog": "gauge",
    "listener_overflow_total": "counter",
    "dead_letter_entries": "gauge",
    "last_event_timestamp_seconds": "gauge",
    "token_revocations_total": "counter",
    "revoked_tokens": "gauge",
    "latest_stale_repositories": "gauge",
    "latest_fixes_total": "counter",
    "retention_deletions_total": "counter",
    "retention_queue_depth": "gauge",
    "retention_oldest_pending_age_seconds": "gauge",
    "unexpected_deletions_total": "counter",
    "reconcile_drift_total": "counter",
    "reconcile_runs_total": "counter",
}

# distribution v3 notifications/metrics.go: go-metrics appends the unit to the names, so the pending gauge
# is exported as registry_notifications_pending_total (not registry_notifications_pending).
REGISTRY_METRICS: dict[str, str] = {
    "registry_notifications_pending_total": "gauge",
    "registry_notifications_events_total": "counter",
    "registry_notifications_status_total": "counter",
}

PROMETHEUS_METRICS: dict[str, str] = {"up": "gauge"}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def series_names() -> frozenset[str]:
    """Every series name a query may select, histograms expanded into _bucket/_sum/_count."""
    names: set[str] = set()
    everything = {CONSUMER_PREFIX + n: t for n, t in CONSUMER_METRICS.items()}
    everything.update(REGISTRY_METRICS)
    everything.update(PROMETHEUS_METRICS)
    for name, kind in everything.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(name)
    return frozenset(names)


# registry_* identifiers, and `up` where it is used as a selector (`up{` or `up ==` etc.).
_METRIC_NAME = re.compile(r"\b(registry_[a-z_]+|up(?=\s*(?:\{|==|!=|>|<|\)|$)))")


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (by the naming conventions of this project)."""
    return set(_METRIC_NAME.findall(expr))
