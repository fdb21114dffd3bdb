"""Reads the Grafana dashboard and turns every panel query into plain PromQL.

Grafana rewrites a query before it sends it to Prometheus: it replaces its global variables
($__rate_interval, $__interval, $__range, ...) and the dashboard's template variables ($instance). To evaluate
a panel's query through Prometheus' own HTTP API, the tests do the same substitution here, so the static test
(every query parses) and the live test (every query returns data) share one reading of the dashboard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "registry-consumer.json"
DATASOURCES = ROOT / "config" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# What Grafana would put in for its global variables; durations must be valid PromQL range durations.
GRAFANA_GLOBALS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# $name, ${name}, ${name:format} and the deprecated [[name]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


class UnknownVariableError(ValueError):
    """A query uses a variable that neither Grafana nor the dashboard defines."""


@dataclass(frozen=True)
class PanelQuery:
    """One Prometheus query of one panel, with every variable substituted."""

    panel_id: int
    panel_title: str
    ref_id: str
    raw_expr: str
    expr: str
    datasource_uid: str | None


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    """The dashboard JSON as a dict."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows; rows themselves are yielded too."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def template_defaults(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Each template variable's value when "All" is selected (its allValue), else its current value."""
    values: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("includeAll") and variable.get("allValue"):
            values[variable["name"]] = variable["allValue"]
        else:
            current = variable.get("current", {}).get("value")
            values[variable["name"]] = current if isinstance(current, str) else ".*"
    return values


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables in ``expr`` with ``values``; an unknown one raises UnknownVariableError."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if name not in values:
            raise UnknownVariableError(f"undefined variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def panel_queries(
    dashboard: Mapping[str, Any] | None = None, overrides: Mapping[str, str] | None = None
) -> list[PanelQuery]:
    """All Prometheus queries of the dashboard, ready to send to /api/v1/query.

    ``overrides`` replaces variable values (e.g. ``{"instance": "127.0.0.1:8080"}`` for a live test, or
    ``{"__rate_interval": "30s"}`` for a short-lived Prometheus).
    """
    dashboard = load_dashboard() if dashboard is None else dashboard
    values = {**GRAFANA_GLOBALS, **template_defaults(dashboard), **(overrides or {})}
    queries: list[PanelQuery] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            raw = target.get("expr", "")
            datasource = target.get("datasource") or panel.get("datasource") or {}
            queries.append(
                PanelQuery(
                    panel_id=panel["id"],
                    panel_title=panel.get("title", ""),
                    ref_id=target.get("refId", ""),
                    raw_expr=raw,
                    expr=substitute(raw, values),
                    datasource_uid=datasource.get("uid"),
                )
            )
    return queries
