"""The alert rules in config/prometheus/alerts.yml, checked and unit-tested with Debian's promtool.

`promtool test rules` runs the cases in tests/prometheus/alerts_test.yml. The other tests here make sure those
cases have teeth: every alert has a firing and a quiet case, and a copy of the rules where one alert always
fires (or never fires) must make the unit tests fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.metric_catalogue import metric_names_in, series_names

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "prometheus" / "alerts.yml"
UNIT_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"


def promtool() -> str:
    """The promtool binary; a missing one is a failure, never a skip."""
    path = shutil.which("promtool")
    assert path is not None, "promtool not found: install Debian's `prometheus` package (make system-deps)"
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def load_rules(path: Path = RULES) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def alert_rules(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


ALERT_NAMES = [rule["alert"] for rule in alert_rules(load_rules())]


def test_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


def test_alert_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = [
        case
        for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in group.get("alert_rule_test", [])
    ]
    for name in ALERT_NAMES:
        firing = [c for c in cases if c["alertname"] == name and c.get("exp_alerts")]
        quiet = [c for c in cases if c["alertname"] == name and not c.get("exp_alerts")]
        assert firing, f"{name} has no case where it fires"
        assert quiet, f"{name} has no case where it stays quiet"
        for case in firing:
            for alert in case["exp_alerts"]:
                assert {"summary", "description", "runbook"} <= set(alert.get("exp_annotations", {})), (
                    f"{name}: a firing case must check the rendered annotations"
                )


def test_every_alert_is_annotated_and_has_a_known_severity() -> None:
    for rule in alert_rules(load_rules()):
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_alerts_only_use_catalogued_metrics() -> None:
    for rule in alert_rules(load_rules()):
        used = metric_names_in(rule["expr"])
        assert used, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert used <= series_names(), f"{rule['alert']} uses uncatalogued {used - series_names()}"


def mutated_rules(tmp_path: Path, alert: str, expr: str, keep_firing: bool) -> Path:
    """Unit tests for ``alert`` alone, run against a copy of the rules where ``alert`` has ``expr``.

    Only the firing cases (``keep_firing``) or only the quiet ones are kept, so a failure can only come from
    the kind of case under scrutiny.
    """
    rules = load_rules()
    for rule in alert_rules(rules):
        if rule["alert"] == alert:
            rule["expr"] = expr
    rules_path = tmp_path / "alerts.yml"
    rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    kept_groups = []
    for group in tests["tests"]:
        group["alert_rule_test"] = [
            case
            for case in group.get("alert_rule_test", [])
            if case["alertname"] == alert and bool(case.get("exp_alerts")) == keep_firing
        ]
        if group["alert_rule_test"]:
            kept_groups.append(group)
    assert kept_groups, f"no {'firing' if keep_firing else 'quiet'} case for {alert}"
    tests["tests"] = kept_groups
    tests["rule_files"] = [str(rules_path)]
    tests_path = tmp_path / "alerts_test.yml"
    tests_path.write_text(yaml.safe_dump(tests, sort_keys=False))
    return tests_path


def test_mutation_harness_keeps_the_original_cases_green(tmp_path: Path) -> None:
    """The filtered copies pass with the real expression, so the mutants below fail for their mutation."""
    alert = ALERT_NAMES[0]
    original = next(r["expr"] for r in alert_rules(load_rules()) if r["alert"] == alert)
    for keep_firing in (True, False):
        result = run_promtool("test", "rules", mutated_rules(tmp_path, alert, original, keep_firing))
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_quiet_cases_catch_an_alert_that_always_fires(tmp_path: Path, alert: str) -> None:
    result = run_promtool("test", "rules", mutated_rules(tmp_path, alert, "vector(1)", keep_firing=False))
    assert result.returncode != 0, f"no quiet case of {alert} notices when it fires all the time"
    assert alert in result.stdout + result.stderr


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_firing_cases_catch_an_alert_that_never_fires(tmp_path: Path, alert: str) -> None:
    result = run_promtool("test", "rules", mutated_rules(tmp_path, alert, "vector(1) > 2", keep_firing=True))
    assert result.returncode != 0, f"no firing case of {alert} notices when it never fires"
    assert alert in result.stdout + result.stderr
