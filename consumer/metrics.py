"""Every Prometheus metric of the service, on a per-application registry.

Label values are bounded sets and pre-initialised so every series exists from the first scrape.
Repository, tag and actor are never labels.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

PREFIX = "registry_consumer"

EVENT_ACTIONS = ("push", "pull", "delete", "mount", "unknown")
EVENT_OUTCOMES = ("applied", "duplicate", "dead_lettered", "ignored")
WEBHOOK_CODES = ("200", "401", "403", "413", "500", "503")
AUTH_FAILURE_REASONS = (
    "missing",
    "malformed",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "bad_algorithm",
    "unknown_kid",
    "bad_audience",
    "bad_issuer",
    "missing_claim",
    "oversized",
    "revoked",
    "insufficient_scope",
    "lifetime_too_long",
)
REVOCATION_KINDS = ("token", "subject", "all")
RETENTION_MODES = ("dry_run", "enforced", "failed")


DELETION_KINDS = ("tag", "manifest")
DRIFT_KINDS = ("missing_tag", "ghost_tag", "wrong_digest", "missing_repository", "ghost_manifest")
RECONCILE_OUTCOMES = ("ok", "error")


def _init_labels(metric: Counter | Gauge, *label_sets: Iterable[str]) -> None:
    if len(label_sets) == 1:
        for value in label_sets[0]:
            metric.labels(value)
        return
    first, *rest = label_sets
    for value in first:
        for combo in _product(rest):
            metric.labels(value, *combo)


def _product(sets: list[Iterable[str]]) -> list[tuple[str, ...]]:
    combos: list[tuple[str, ...]] = [()]
    for values in sets:
        combos = [(*c, v) for c in combos for v in values]
    return combos


class Metrics:
    """The service's metrics, bound to one :class:`CollectorRegistry`."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        if process:
            ProcessCollector(registry=r)
        self.events = Counter(
            f"{PREFIX}_events_total", "Registry events by action and outcome.", ["action", "outcome"], registry=r
        )
        _init_labels(self.events, EVENT_ACTIONS, EVENT_OUTCOMES)
        self.webhook_requests = Counter(
            f"{PREFIX}_webhook_requests_total", "Webhook answers by HTTP status code.", ["code"], registry=r
        )
        _init_labels(self.webhook_requests, WEBHOOK_CODES)
        # The webhook's children, looked up once: ``labels()`` takes a lock and builds a key on every call.
        self._event_counts = {(a, o): self.events.labels(a, o) for a in EVENT_ACTIONS for o in EVENT_OUTCOMES}
        self._answer_counts = {code: self.webhook_requests.labels(code) for code in WEBHOOK_CODES}
        self.webhook_duration = Histogram(
            f"{PREFIX}_webhook_request_duration_seconds",
            "Time to answer one webhook delivery (the registry gives up after its timeout, 1 s by default).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.redis_errors = Counter(
            f"{PREFIX}_redis_errors_total", "Redis commands that failed (connection, timeout).", registry=r
        )
        self.redis_roundtrip = Histogram(
            f"{PREFIX}_redis_roundtrip_seconds",
            "Round-trip time of the readiness PING to Redis.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 when Redis answers and the service is not shutting down.",
                           registry=r)
        self.auth_failures = Counter(
            f"{PREFIX}_auth_failures_total", "Rejected bearer tokens by reason.", ["reason"], registry=r
        )
        _init_labels(self.auth_failures, AUTH_FAILURE_REASONS)
        self.token_revocations = Counter(
            f"{PREFIX}_token_revocations_total",
            "Revocations made through the API, by kind (one token, a subject's tokens, all tokens).",
            ["kind"],
            registry=r,
        )
        _init_labels(self.token_revocations, REVOCATION_KINDS)
        self.revoked_tokens = Gauge(
            f"{PREFIX}_revoked_tokens",
            "Live entries of the revocation list (revoked tokens, subject cutoffs, the global cutoff).",
            registry=r,
        )
        self.index_repositories = Gauge(
            f"{PREFIX}_index_repositories", "Repositories in the tag index.", registry=r
        )
        self.index_tags = Gauge(f"{PREFIX}_index_tags", "Live tags in the tag index.", registry=r)
        self.listener_backlog = Gauge(
            f"{PREFIX}_listener_backlog",
            "Policy listener runs (latest, retention, deletion checks) queued for applied events and not finished "
            "in this process; growing means policies fall behind the webhook.",
            registry=r,
        )
        self.listener_overflow = Counter(
            f"{PREFIX}_listener_overflow_total",
            "Applied events that latest or retention did not judge one by one because the listener backlog was "
            "full (listener_backlog_max_events); their repositories were re-evaluated whole instead.",
            registry=r,
        )
        self.dead_letter_entries = Gauge(
            f"{PREFIX}_dead_letter_entries", "Entries in the capped dead-letter stream.", registry=r
        )
        self.last_event_timestamp = Gauge(
            f"{PREFIX}_last_event_timestamp_seconds",
            "Unix time at which the last registry event was accepted.",
            registry=r,
        )
        self.retention_deletions = Counter(
            f"{PREFIX}_retention_deletions_total",
            "Retention deletions by mode: planned under dry_run, carried out (enforced), given up (failed).",
            ["mode"],
            registry=r,
        )
        _init_labels(self.retention_deletions, RETENTION_MODES)
        self.retention_queue_depth = Gauge(
            f"{PREFIX}_retention_queue_depth", "Retention deletions queued and not finished.", registry=r
        )
        self.retention_oldest_pending_age = Gauge(
            f"{PREFIX}_retention_oldest_pending_age_seconds",
            "How long the oldest queued retention deletion has waited (0 when none is queued).",
            registry=r,
        )
        self.unexpected_deletions = Counter(
            f"{PREFIX}_unexpected_deletions_total",
            "Deletions in the registry that the consumer did not plan, by kind and whether policy protected them.",
            ["kind", "protected"],
            registry=r,
        )
        _init_labels(self.unexpected_deletions, DELETION_KINDS, ("true", "false"))
        self.latest_stale_repositories = Gauge(
            f"{PREFIX}_latest_stale_repositories",
            "Repositories whose latest tag does not point where their policy says.",
            registry=r,
        )
        self.latest_fixes = Counter(
            f"{PREFIX}_latest_fixes_total", "Times the consumer moved a latest tag to where policy says.", registry=r
        )
        self.reconcile_drift = Counter(
            f"{PREFIX}_reconcile_drift_total",
            "Differences between the index and the registry that reconciliation repaired, by kind.",
            ["kind"],
            registry=r,
        )
        _init_labels(self.reconcile_drift, DRIFT_KINDS)
        self.reconcile_runs = Counter(
            f"{PREFIX}_reconcile_runs_total", "Reconciliation runs by outcome.", ["outcome"], registry=r
        )
        _init_labels(self.reconcile_runs, RECONCILE_OUTCOMES)

    def count_event(self, action: str, outcome: str) -> None:
        """One registry event with ``outcome``; ``action`` outside :data:`EVENT_ACTIONS` counts as unknown."""
        child = self._event_counts.get((action, outcome))
        if child is None:
            child = self._event_counts[("unknown", outcome)]
        child.inc()

    def count_answer(self, code: int, duration_seconds: float) -> None:
        """One webhook answer: its status code and how long it took."""
        key = str(code)
        child = self._answer_counts.get(key)
        if child is None:
            child = self.webhook_requests.labels(key)
        child.inc()
        self.webhook_duration.observe(duration_seconds)
