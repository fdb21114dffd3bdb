"""config/kubernetes: valid manifests (Kubernetes' own schemas), consistent with each other, with the image and
with the service (routes, shutdown timing, settings), and the PrometheusRule in step with alerts.yml."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from consumer.app import create_app
from consumer.metrics import Metrics
from consumer.settings import load_settings
from scripts import prometheus_rule

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "config" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}  # CRDs: no schema in kubernetes-validate


def manifests() -> dict[str, dict[str, Any]]:
    resources = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    docs = {name: yaml.safe_load((K8S / name).read_text()) for name in resources}
    return {doc["kind"]: doc for doc in docs.values()}


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_each_manifest_is_valid_for_kubernetes(name: str) -> None:
    doc = yaml.safe_load((K8S / name).read_text())
    if doc["kind"] in OPERATOR_KINDS:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["spec"]
        return
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on any unknown or wrong field


def test_the_pieces_fit_together(tmp_path: Path) -> None:
    m = manifests()
    deployment, service, monitor, pdb = m["Deployment"], m["Service"], m["ServiceMonitor"], m["PodDisruptionBudget"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for selector in (deployment["spec"]["selector"]["matchLabels"], service["spec"]["selector"],
                     pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)

    # The settings the pod runs with load, and listen on the container's port.
    env = {e["name"]: e.get("value") for e in container["env"]}
    config = tmp_path / "consumer.yaml"
    config.write_text(m["ConfigMap"]["data"]["consumer.yaml"])
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e} | {
        item["key"] for v in pod["spec"]["volumes"] if "secret" in v for item in v["secret"]["items"]
    } <= set(secret["stringData"])
    settings = load_settings(config, listen=env["REGISTRY_CONSUMER_LISTEN"], jwt_secret="x" * 32)
    assert int(settings.listen.rpartition(":")[2]) == ports["http"]
    mount = {v["mountPath"] for v in container["volumeMounts"] if v["name"] == "config"}
    assert mount == {str(Path(env["REGISTRY_CONSUMER_CONFIG"]).parent)}

    # Kubernetes waits long enough for the graceful shutdown (consumer.server) before it kills.
    needed = settings.shutdown_delay_seconds + 2 * settings.shutdown_timeout_seconds
    assert pod["spec"]["terminationGracePeriodSeconds"] >= needed + 5

    # The probes ask routes the service has.
    paths = {r.resource.canonical for r in create_app(settings, metrics=Metrics(process=False)).router.routes()
             if r.resource is not None}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in paths and container[probe]["httpGet"]["port"] in ports
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"

    # The image's own user (Dockerfile), so runAsNonRoot can verify it.
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None
    assert (pod["spec"]["securityContext"]["runAsUser"], pod["spec"]["securityContext"]["runAsGroup"]) == (
        int(user[1]), int(user[2]))


def test_the_prometheus_rule_is_alerts_yml_and_promtool_accepts_it(tmp_path: Path) -> None:
    assert prometheus_rule.main(["--check"]) == 0, "run: python scripts/prometheus_rule.py --write"
    rule = yaml.safe_load((K8S / "prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == yaml.safe_load((ROOT / "config/prometheus/alerts.yml").read_text())["groups"]
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(["promtool", "check", "rules", str(extracted)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
