"""The README's metric catalogue lists exactly what the service exposes, as the code defines it.

The table is generated (scripts/metrics_catalogue.py); this test fails when it was not regenerated after a
change to consumer/metrics.py, when the app's real /metrics differs from it, when a name breaks the
conventions, or when the catalogue the alerts and the dashboard are checked against (tests/support/
metric_catalogue.py) names something else.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from scripts.metrics_catalogue import BEGIN, END, catalogue, readme_section, render, write
from tests.conftest import ConsumerProcess
from tests.support.metric_catalogue import CONSUMER_METRICS, CONSUMER_PREFIX

README = Path(__file__).resolve().parent.parent / "README.md"
ROW = re.compile(r"^\| `(?P<name>registry_consumer_[a-z_]+)` \| (?P<kind>counter|gauge|histogram) \|", re.M)


def readme_metrics() -> dict[str, str]:
    """name -> type, as the README's table lists them."""
    return {m["name"]: m["kind"] for m in ROW.finditer(readme_section(README.read_text()))}


def exposed_families(consumer: ConsumerProcess) -> list[Metric]:
    """Every registry_consumer_ family a running ``python -m consumer serve`` serves on /metrics."""
    with urllib.request.urlopen(f"{consumer.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    families = list(text_string_to_metric_families(text))
    names = {f.name for f in families}
    return [
        f for f in families
        if f.name.startswith(CONSUMER_PREFIX)
        # the client library's <counter or histogram>_created companions (README: "_created")
        and not (f.name.endswith("_created") and f.name.removesuffix("_created") in names)
    ]


def test_the_readme_table_is_the_generated_one() -> None:
    assert readme_section(README.read_text()) == render(), (
        "README.md's metric catalogue is out of date: run python scripts/metrics_catalogue.py --write"
    )


def test_the_readme_lists_exactly_what_the_service_exposes(consumer_process: ConsumerProcess) -> None:
    families = exposed_families(consumer_process)
    exposed = {f.name + ("_total" if f.type == "counter" else ""): f.type for f in families}
    documented = readme_metrics()
    assert exposed, "the service exposes no registry_consumer_ metric"
    assert documented == exposed, (
        f"undocumented: {sorted(set(exposed) - set(documented))}; "
        f"documented but not exposed: {sorted(set(documented) - set(exposed))}"
    )
    # Known label values are pre-initialised: the README's promise that rate() sees the first event.
    samples = {(s.name, label, value) for f in families for s in f.samples for label, value in s.labels.items()}
    for doc in catalogue():
        base = doc.name.removesuffix("_total")
        for label, values in doc.labels.items():
            for value in values:
                assert any(name.startswith(base) and (lab, val) == (label, value) for name, lab, val in samples), (
                    doc.name, label, value
                )


def test_names_follow_the_conventions() -> None:
    for doc in catalogue():
        assert doc.name.startswith(CONSUMER_PREFIX), doc.name
        assert doc.name.endswith("_total") == (doc.kind == "counter"), doc.name
        if doc.kind == "histogram":
            assert doc.name.endswith(("_seconds", "_bytes")), f"{doc.name}: a histogram in base units"
        assert doc.meaning.strip(), f"{doc.name} has no help text"
        assert not {"repository", "tag", "actor", "digest"} & set(doc.labels), f"{doc.name}: unbounded label"


def test_alerts_and_dashboard_are_checked_against_the_same_catalogue() -> None:
    documented = readme_metrics()
    assert {CONSUMER_PREFIX + name: kind for name, kind in CONSUMER_METRICS.items()} == documented


def test_write_replaces_only_the_section(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{BEGIN}\n| stale |\n{END}\n\nafter\n")
    assert write(readme) is True
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert readme_section(text) == render()
    assert write(readme) is False
