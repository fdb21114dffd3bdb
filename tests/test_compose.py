"""docker-compose.yml, the Dockerfile and the registry's start-up script, checked with the real programs here.

No Docker engine runs on this machine, so: Debian's ``docker-compose config`` validates and resolves the
compose file; the resolved file is checked for the wiring between services (ports, names, mounts, secrets)
against the config files it mounts; the registry's entrypoint script runs under ``sh`` and starts Debian's
distribution registry, whose notifications (token from a secret file) must be accepted by the real consumer;
the Dockerfile's HEALTHCHECK command runs against a real consumer process.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.settings import ENV_PREFIX, REGISTRY_URL_ENV, Settings, load_settings
from consumer.tokens import mint
from tests.conftest import JWT_SECRET, ConsumerProcess
from tests.support import oci, skopeo
from tests.support.procs import LOOPBACK, ManagedProcess, free_port, wait_for_port
from tests.support.registry import TokenIssuer, repository_access

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
REGISTRY_CONFIG = ROOT / "config" / "registry" / "config.yml"
REGISTRY_ENTRYPOINT = ROOT / "config" / "registry" / "entrypoint.sh"
PLACEHOLDER = "@@REGISTRY_NOTIFY_TOKEN@@"
EXPECTED_SERVICES = {"registry", "redis", "consumer", "nginx", "prometheus", "grafana", "token-server"}
DOCKER_AUTH_TEMPLATE = ROOT / "config" / "docker_auth" / "auth_config.yml"
CONSUMER_COMPOSE_CONFIG = ROOT / "config" / "consumer.compose.yaml"


def docker_compose() -> str:
    path = shutil.which("docker-compose")
    assert path is not None, "docker-compose not found: install Debian's `docker-compose` package"
    return path


def run_compose_config(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [docker_compose(), "-f", str(COMPOSE_FILE), "config", *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (absolute paths, normalised ports and volumes)."""
    result = run_compose_config()
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = yaml.safe_load(result.stdout)
    return data


def binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("/"):
            mounts[target] = Path(source)
    return mounts


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of a service's published ports."""
    out = []
    for port in service.get("ports", []):
        host_ip, host_port, container = port.split(":")
        out.append((host_ip, int(host_port), int(container.split("/")[0])))
    return out


# --- docker-compose config ------------------------------------------------------------------------------


def test_docker_compose_config_is_valid() -> None:
    result = run_compose_config("-q")
    assert result.returncode == 0, result.stderr


def test_the_stack_has_every_service(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == EXPECTED_SERVICES
    assert resolved["services"]["registry"]["image"] == "registry:3"


def test_every_bind_mount_exists_in_the_repository(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        for target, source in binds(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert ROOT in source.parents, f"{name}: {source} is outside the repository"


def test_secrets_come_from_files_never_inline(resolved: dict[str, Any]) -> None:
    declared = resolved["secrets"]
    assert set(declared) == {
        "registry_notify_token", "consumer_jwt_secret", "grafana_admin_password", "registry_token_key",
        "registry_token_cert", "registry_token_jwks", "registry_consumer_password", "docker_auth_config",
    }
    for name, secret in declared.items():
        assert Path(secret["file"]) == ROOT / "secrets" / name
    for name, service in resolved["services"].items():
        for ref in service.get("secrets", []):
            assert ref["source"] in declared, f"{name} uses undeclared secret {ref['source']}"
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"SECRET|PASSWORD|TOKEN", key):
                assert key.endswith("_FILE") or key.endswith("__FILE"), f"{name}: {key} looks inline"
                assert str(value).startswith("/run/secrets/"), f"{name}: {key}={value}"
    compose_text = COMPOSE_FILE.read_text()
    assert "/secrets/" in (ROOT / ".gitignore").read_text(), "secret files must stay out of git"
    assert "eyJ" not in compose_text, "a JWT is pasted into docker-compose.yml"


def test_only_the_front_doors_are_published_on_loopback(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert not published(services["registry"]), "the registry must only be reachable through nginx"
    assert not published(services["redis"])
    for name, service in services.items():
        for host_ip, _host_port, _container in published(service):
            assert host_ip == "127.0.0.1", f"{name} is published beyond loopback"
    assert (LOOPBACK, 5000, 80) in published(services["nginx"])


def test_redis_persists_and_never_evicts(resolved: dict[str, Any]) -> None:
    command = resolved["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data:rw") for v in resolved["services"]["redis"]["volumes"])


def test_registry_config_enables_deletes_metrics_and_notifies_the_consumer(resolved: dict[str, Any]) -> None:
    registry = resolved["services"]["registry"]
    mounts = binds(registry)
    environment = registry["environment"]
    template = mounts[environment["REGISTRY_CONFIG_TEMPLATE"]]
    assert template == REGISTRY_CONFIG
    assert mounts["/etc/distribution/entrypoint.sh"] == REGISTRY_ENTRYPOINT
    assert registry["entrypoint"] == ["/bin/sh", "/etc/distribution/entrypoint.sh"]
    assert environment["REGISTRY_NOTIFY_TOKEN_FILE"] == "/run/secrets/registry_notify_token"
    assert any(ref["source"] == "registry_notify_token" for ref in registry["secrets"])
    rendered_dir = str(Path(environment["REGISTRY_CONFIG_RENDERED"]).parent)
    assert any(t.split(":")[0] == rendered_dir for t in registry.get("tmpfs", [])), "render into a tmpfs"

    config = yaml.safe_load(REGISTRY_CONFIG.read_text())
    assert config["storage"]["delete"]["enabled"] is True
    assert config["http"]["debug"]["prometheus"]["enabled"] is True
    (endpoint,) = config["notifications"]["endpoints"]
    assert endpoint["headers"]["Authorization"] == [f"Bearer {PLACEHOLDER}"]
    assert REGISTRY_CONFIG.read_text().count(PLACEHOLDER) == 1

    consumer_env = resolved["services"]["consumer"]["environment"]
    consumer_port = int(consumer_env["REGISTRY_CONSUMER_LISTEN"].rpartition(":")[2])
    assert endpoint["url"] == f"http://consumer:{consumer_port}/v1/events"


def test_notification_url_is_the_consumers_webhook_route() -> None:
    from aiohttp.web import RouteDef

    from consumer import webhook

    endpoint = yaml.safe_load(REGISTRY_CONFIG.read_text())["notifications"]["endpoints"][0]
    path = endpoint["url"].split("/", 3)[3]
    routes = {(r.method, r.path) for r in webhook.routes if isinstance(r, RouteDef)}
    assert ("POST", "/" + path) in routes


def test_prometheus_scrapes_the_compose_services(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    mounts = binds(services["prometheus"])
    config_dir = mounts["/etc/prometheus"]
    assert config_dir == ROOT / "config" / "prometheus"
    prom = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    targets = {sc["job_name"]: sc["static_configs"][0]["targets"] for sc in prom["scrape_configs"]}
    consumer_port = services["consumer"]["environment"]["REGISTRY_CONSUMER_LISTEN"].rpartition(":")[2]
    assert targets["registry-consumer"] == [f"consumer:{consumer_port}"]
    debug_port = yaml.safe_load(REGISTRY_CONFIG.read_text())["http"]["debug"]["addr"].rpartition(":")[2]
    assert targets["registry"] == [f"registry:{debug_port}"]
    for rule_file in prom["rule_files"]:
        assert (config_dir / rule_file).is_file()
    result = subprocess.run(
        ["promtool", "check", "config", str(config_dir / "prometheus.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_gets_the_provisioning_and_the_dashboards(resolved: dict[str, Any]) -> None:
    grafana = resolved["services"]["grafana"]
    mounts = binds(grafana)
    assert mounts["/etc/grafana/provisioning"] == ROOT / "config" / "grafana" / "provisioning"
    provider = yaml.safe_load(
        (ROOT / "config/grafana/provisioning/dashboards/dashboards.yml").read_text()
    )["providers"][0]
    assert mounts[provider["options"]["path"]] == ROOT / "config" / "grafana" / "dashboards"
    datasource = yaml.safe_load(
        (ROOT / "config/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (mounts[str(home.parent)] / home.name).is_file()


def test_nginx_includes_the_forward_auth_snippet_with_its_upstreams(resolved: dict[str, Any]) -> None:
    nginx = resolved["services"]["nginx"]
    mounts = binds(nginx)
    conf_text = mounts["/etc/nginx/conf.d/default.conf"].read_text()
    include = re.search(r"include\s+(\S+);", conf_text)
    assert include is not None
    assert mounts[include.group(1)] == ROOT / "config" / "nginx" / "registry-forward-auth.conf"
    upstreams = dict(re.findall(r"upstream\s+(\w+)\s*\{\s*server\s+([^;\s]+)", conf_text))
    consumer_port = resolved["services"]["consumer"]["environment"]["REGISTRY_CONSUMER_LISTEN"].rpartition(":")[2]
    registry_port = yaml.safe_load(REGISTRY_CONFIG.read_text())["http"]["addr"].rpartition(":")[2]
    assert upstreams == {
        "registry_upstream": f"registry:{registry_port}",
        "registry_consumer_upstream": f"consumer:{consumer_port}",
    }
    assert nginx["depends_on"]["consumer"]["condition"] == "service_healthy"


def test_consumer_is_built_here_and_its_configuration_is_accepted(
    resolved: dict[str, Any], tmp_path: Path
) -> None:
    """The mounted config plus the service's environment load with the real settings code."""
    consumer = resolved["services"]["consumer"]
    assert Path(consumer["build"]["context"]) == ROOT
    assert consumer["build"]["dockerfile"] == "Dockerfile"
    assert consumer["depends_on"]["redis"]["condition"] == "service_healthy"
    mounts = binds(consumer)
    environment = dict(consumer["environment"])
    registry_port = yaml.safe_load(REGISTRY_CONFIG.read_text())["http"]["addr"].rpartition(":")[2]
    assert environment[REGISTRY_URL_ENV] == f"http://registry:{registry_port}"
    config_path = mounts[environment.pop(ENV_PREFIX + "CONFIG")]
    secret_file = tmp_path / "consumer_jwt_secret"
    secret_file.write_text(JWT_SECRET + "\n")
    assert environment[ENV_PREFIX + "JWT_SECRET_FILE"] == "/run/secrets/consumer_jwt_secret"
    environment[ENV_PREFIX + "JWT_SECRET_FILE"] = str(secret_file)
    fields = {name.upper() for name in Settings.model_fields}
    for key in environment:
        assert key.startswith(ENV_PREFIX)
        name = key.removeprefix(ENV_PREFIX).split("__")[0]
        assert name in fields or key == REGISTRY_URL_ENV, f"{key} is not a setting"
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    code = (
        "import sys; from consumer.settings import load_settings; s = load_settings(sys.argv[1]); "
        "print(s.listen, s.redis_url, s.jwt_secret_bytes().decode(), s.registry.url)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(config_path)],
        env={**clean_env, **environment}, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.0.0.0:8080", "redis://redis:6379/0", JWT_SECRET, "http://registry:5000"]
    # issuer/audience of the compose config must be what `make secrets` mints the registry token for.
    assert load_settings(config_path, jwt_secret=JWT_SECRET).auth == load_settings(None, jwt_secret=JWT_SECRET).auth


# --- the registry's entrypoint script ------------------------------------------------------------------


def run_entrypoint(tmp_path: Path, token_text: str | None, *command: str) -> subprocess.CompletedProcess[str]:
    token_file = tmp_path / "registry_notify_token"
    if token_text is not None:
        token_file.write_text(token_text)
    env = {
        "PATH": os.environ["PATH"],
        "REGISTRY_CONFIG_TEMPLATE": str(REGISTRY_CONFIG),
        "REGISTRY_CONFIG_RENDERED": str(tmp_path / "run" / "config.yml"),
        "REGISTRY_NOTIFY_TOKEN_FILE": str(token_file),
    }
    return subprocess.run(
        ["sh", str(REGISTRY_ENTRYPOINT), *command],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )


def test_entrypoint_renders_the_token_into_a_private_file_and_execs_the_command(tmp_path: Path) -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyZWdpc3RyeSJ9.c2ln-_~+/="
    result = run_entrypoint(tmp_path, f"  {token}\r\n", "sh", "-c", 'echo "args: $*"; cat "$1"', "cmd")
    assert result.returncode == 0, result.stderr
    rendered = tmp_path / "run" / "config.yml"
    assert result.stdout.startswith(f"args: {rendered}\n")
    config = yaml.safe_load(rendered.read_text())
    assert config["notifications"]["endpoints"][0]["headers"] == {"Authorization": [f"Bearer {token}"]}
    assert PLACEHOLDER not in rendered.read_text()
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o600
    # Everything but the token line is the template, byte for byte.
    template_lines = REGISTRY_CONFIG.read_text().splitlines()
    rendered_lines = rendered.read_text().splitlines()
    assert [t for t, r in zip(template_lines, rendered_lines, strict=True) if t != r] == [
        line for line in template_lines if PLACEHOLDER in line
    ]


@pytest.mark.parametrize(
    ("token_text", "message"),
    [
        (None, "cannot read"),
        ("\n", "is empty"),
        ('abc"\ninjected: true', "unexpected characters"),
        ("abc def", None),  # inner whitespace is stripped, so this one passes: a single b64token
    ],
)
def test_entrypoint_refuses_what_is_not_a_token(tmp_path: Path, token_text: str | None, message: str | None) -> None:
    result = run_entrypoint(tmp_path, token_text, "echo", "started")
    if message is None:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode != 0
    assert message in result.stderr
    assert "started" not in result.stdout
    assert not (tmp_path / "run" / "config.yml").exists()


async def test_registry_started_by_the_entrypoint_authenticates_to_the_real_consumer(
    tmp_path: Path, consumer_process: ConsumerProcess
) -> None:
    """Debian's registry (2.8.2), started through entrypoint.sh with the compose config, pushes events to the
    consumer with the token from the secret file; the consumer verifies it and indexes the push."""
    consumer_settings = load_settings(None, jwt_secret=JWT_SECRET)
    token = mint(consumer_settings.auth, JWT_SECRET.encode(), sub="registry", scope="events:write",
                 ttl_seconds=3600)
    token_file = tmp_path / "registry_notify_token"
    token_file.write_text(token + "\n")
    # 2.8 cannot override a list element from the environment, so the consumer's address goes into a copy.
    template = tmp_path / "config.yml"
    template.write_text(
        REGISTRY_CONFIG.read_text().replace("http://consumer:8080/v1/events", f"{consumer_process.url}/v1/events")
    )
    port, debug_port = free_port(), free_port()
    # The compose config turns token auth on; a key of the test's own stands in for the token server's
    # (2.8 finds it by libtrust key ID, distribution 3 by JWK thumbprint: see test_token_server_*).
    auth = yaml.safe_load(REGISTRY_CONFIG.read_text())["auth"]["token"]
    issuer = TokenIssuer(tmp_path / "token", issuer=auth["issuer"], service=auth["service"], algorithm="RS256")
    env = {
        "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(issuer.cert_path),
        "PATH": os.environ["PATH"],
        "REGISTRY_CONFIG_TEMPLATE": str(template),
        "REGISTRY_CONFIG_RENDERED": str(tmp_path / "run" / "config.yml"),
        "REGISTRY_NOTIFY_TOKEN_FILE": str(token_file),
        "REGISTRY_HTTP_ADDR": f"{LOOPBACK}:{port}",
        "REGISTRY_HTTP_DEBUG_ADDR": f"{LOOPBACK}:{debug_port}",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "storage"),
    }
    registry = ManagedProcess(
        "registry", ["sh", str(REGISTRY_ENTRYPOINT), "/usr/bin/docker-registry", "serve"],
        tmp_path / "registry.log", env=env,
    )
    with registry:
        wait_for_port(LOOPBACK, port, timeout=20, process=registry)
        image = oci.write_image(tmp_path / "layout", "v1")
        push_token = issuer.mint([repository_access("team/app")], subject="ci-bot")
        await skopeo.copy(image.transport_ref, f"docker://{LOOPBACK}:{port}/team/app:v1", preserve_digests=True,
                          dest_auth=skopeo.Auth(token=push_token))
        tags = wait_for_index(consumer_process, "team/app")
    assert "v1" in tags, registry.log_tail()
    metrics = scrape(consumer_process.url + "/metrics")
    assert metric_value(metrics, 'registry_consumer_webhook_requests_total{code="401"}') == 0
    assert metric_value(metrics, 'registry_consumer_webhook_requests_total{code="403"}') == 0


def wait_for_index(consumer: ConsumerProcess, repository: str, timeout_seconds: float = 30.0) -> list[str]:
    """Poll the consumer's query API until ``repository`` has tags; return their names."""
    request = urllib.request.Request(
        f"{consumer.url}/v1/repositories/{repository}/tags",
        headers={"Authorization": f"Bearer {consumer.token}"},
    )
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            exc.close()
            body = {}
        names = [t["tag"] if isinstance(t, dict) else t for t in body.get("tags", [])]
        if names:
            return names
        time.sleep(0.2)
    return []


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


def metric_value(exposition: str, series: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not exposed")


# --- Dockerfile ----------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def healthcheck_argv() -> list[str]:
    (args,) = [a for k, a in final_stage() if k == "HEALTHCHECK"]
    cmd = args[args.index("CMD ") + 4:]
    argv: list[str] = json.loads(cmd)
    return argv


def test_dockerfile_runs_a_non_root_python_311_slim_image() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    (user,) = [a for k, a in stage if k == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert ("EXPOSE", "8080") in stage
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: missing"
                assert not any(
                    line.strip() == source for line in DOCKERIGNORE.read_text().splitlines()
                ), f"{source} is both copied and ignored"


def test_dockerfile_command_is_a_real_subcommand() -> None:
    from consumer.cli import build_parser

    (cmd,) = [a for k, a in final_stage() if k == "CMD"]
    argv = json.loads(cmd)
    assert argv[0] == "registry-consumer"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve"


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")}
    assert {".git", ".venv", "secrets", "tests"} <= ignored


def test_healthcheck_uses_only_the_standard_library_and_readyz() -> None:
    argv = healthcheck_argv()
    assert argv[:2] == ["python", "-c"]
    imports = set(re.findall(r"import ([\w., ]+?);", argv[2])[0].replace(" ", "").split(","))
    assert imports <= set(sys.stdlib_module_names) | {"urllib.request"}
    assert "/readyz" in argv[2]


def run_healthcheck(listen: str) -> subprocess.CompletedProcess[str]:
    argv = healthcheck_argv()
    return subprocess.run(
        [sys.executable, *argv[1:]],
        env={"PATH": os.environ["PATH"], "REGISTRY_CONSUMER_LISTEN": listen},
        capture_output=True, text=True, timeout=30, check=False,
    )


def test_healthcheck_passes_on_a_ready_consumer(consumer_process: ConsumerProcess) -> None:
    result = run_healthcheck(f"0.0.0.0:{consumer_process.port}")
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    assert run_healthcheck(f"0.0.0.0:{free_port()}").returncode != 0


def test_healthcheck_fails_on_a_consumer_without_redis(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update({
        ENV_PREFIX + "LISTEN": f"{LOOPBACK}:{port}",
        ENV_PREFIX + "REDIS_URL": f"redis://{LOOPBACK}:{free_port()}/0",
        ENV_PREFIX + "JWT_SECRET": JWT_SECRET,
    })
    with ManagedProcess("consumer", [sys.executable, "-m", "consumer", "serve"], tmp_path / "c.log",
                        env=env) as proc:
        wait_for_port(LOOPBACK, port, timeout=20, process=proc)
        result = run_healthcheck(f"0.0.0.0:{port}")
    assert result.returncode != 0
    assert "503" in result.stderr


# --- the token server (docker_auth), its secrets, and the consumer's forward-auth ----------------------------


def compose_secrets() -> Any:
    """scripts/compose_secrets.py, what ``make secrets`` runs for the token server."""
    from scripts import compose_secrets as module

    return module


def test_jwk_thumbprint_is_rfc_7638() -> None:
    """RFC 7638 section 3.1: the example RSA key and its thumbprint."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
        "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5h"
        "ajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert compose_secrets().jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_make_secrets_script_writes_a_consistent_set_and_keeps_it(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    module = compose_secrets()
    directory = tmp_path / "secrets"
    written = module.ensure(directory)
    assert set(written) == {"registry_token_key", "registry_token_cert", "registry_token_jwks",
                            "registry_admin_password", "registry_consumer_password", "docker_auth_config"}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "registry_token_key").stat().st_mode) == 0o600
    key = serialization.load_pem_private_key((directory / "registry_token_key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((directory / "registry_token_cert").read_bytes())
    assert cert.public_key() == key.public_key()
    (jwk,) = json.loads((directory / "registry_token_jwks").read_text())["keys"]
    assert jwk["kid"] == module.jwk_thumbprint(module.rsa_public_jwk(cert.public_key()))
    assert (jwk["alg"], "d" in jwk) == ("RS256", False)

    config = yaml.safe_load((directory / "docker_auth_config").read_text())
    for user, file in (("admin", "registry_admin_password"), ("registry-consumer", "registry_consumer_password")):
        hashed = config["users"][user]["password"]
        password = (directory / file).read_text().strip()
        assert hashed.startswith("$2y$") and password not in hashed
        salt = hashed[:29]  # "$2y$10$" + 22 characters
        assert bcrypt_hash_with_salt(password, salt) == hashed, user
    assert "@@" not in yaml.safe_dump(config)

    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert module.ensure(directory) == []
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


def bcrypt_hash_with_salt(password: str, salt: str) -> str:
    """crypt(3) with a given bcrypt salt: how docker_auth will check the password against the hash."""
    import ctypes

    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    result = lib.crypt(password.encode(), salt.encode())
    assert result, "libcrypt refused the salt"
    return str(result.decode())


def test_token_server_is_wired_to_the_registry_and_the_consumer(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    token_server = services["token-server"]
    template = yaml.safe_load(DOCKER_AUTH_TEMPLATE.read_text())
    registry_auth = yaml.safe_load(REGISTRY_CONFIG.read_text())["auth"]["token"]
    consumer_auth = yaml.safe_load(CONSUMER_COMPOSE_CONFIG.read_text())["registry_auth"]

    image, _, version = token_server["image"].partition(":")
    assert image == "cesanta/docker_auth"
    assert tuple(int(p) for p in version.split(".")) >= (1, 14, 0), "disable_legacy_key_id needs docker_auth 1.14"
    assert template["token"]["disable_legacy_key_id"] is True
    # One issuer, one service, one realm everywhere.
    assert template["token"]["issuer"] == registry_auth["issuer"] == consumer_auth["issuer"]
    assert registry_auth["service"] == consumer_auth["service"]
    assert registry_auth["realm"] == consumer_auth["realm"]
    realm = consumer_auth["realm"]
    assert realm.startswith(f"http://{LOOPBACK}:") and realm.endswith("/auth")
    realm_port = int(realm.split(":")[2].split("/")[0])
    # The realm is reachable from the host (published on the consumer, whose namespace the token server
    # shares) and from the consumer itself (same namespace).
    assert token_server["network_mode"] == "service:consumer"
    assert int(template["server"]["addr"].rpartition(":")[2]) == realm_port
    assert (LOOPBACK, realm_port, realm_port) in published(services["consumer"])
    # Keys: the token server signs with the key, the registry trusts the certificate, the consumer the JWKS.
    mounted = {ref["source"]: ref.get("target", f"/run/secrets/{ref['source']}") for ref in token_server["secrets"]}
    assert template["token"]["key"] == "/run/secrets/registry_token_key" and "registry_token_key" in mounted
    assert template["token"]["certificate"] == "/run/secrets/registry_token_cert"
    assert token_server["command"][-1] == "/run/secrets/docker_auth_config" and "docker_auth_config" in mounted
    assert registry_auth["rootcertbundle"] == "/run/secrets/registry_token_cert"
    assert any(ref["source"] == "registry_token_cert" for ref in services["registry"]["secrets"])
    consumer_secrets = {ref["source"] for ref in services["consumer"]["secrets"]}
    assert consumer_auth["jwks_file"] == "/run/secrets/registry_token_jwks"
    assert {"registry_token_jwks", "registry_consumer_password"} <= consumer_secrets
    consumer_registry = yaml.safe_load(CONSUMER_COMPOSE_CONFIG.read_text())["registry"]
    assert consumer_registry["username"] in template["users"]
    assert consumer_registry["password_file"] == "/run/secrets/registry_consumer_password"
    # Every user has an ACL entry; the template's hashes are placeholders, filled by make secrets.
    assert {entry["match"]["account"] for entry in template["acl"]} == set(template["users"])
    assert all(user["password"].startswith("@@") for user in template["users"].values())


async def test_forward_auth_accepts_what_docker_auth_signs_and_refuses_the_rest(
    tmp_path: Path, aiohttp_client: Any, make_settings: Any
) -> None:
    """The consumer with the compose registry_auth and the secrets make secrets writes: a token signed the way
    docker_auth 1.14 signs with disable_legacy_key_id (RS256, kid = JWK thumbprint) passes GET /v1/auth; a
    libtrust kid, another key, or no token do not."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    from consumer.app import create_app

    module = compose_secrets()
    directory = tmp_path / "secrets"
    module.ensure(directory)
    section = yaml.safe_load(CONSUMER_COMPOSE_CONFIG.read_text())["registry_auth"]
    section["jwks_file"] = str(directory / "registry_token_jwks")
    client = await aiohttp_client(create_app(make_settings(registry_auth=section)))
    key_pem = (directory / "registry_token_key").read_bytes()
    (jwk,) = json.loads((directory / "registry_token_jwks").read_text())["keys"]
    now = int(time.time())
    claims = {"iss": section["issuer"], "sub": "admin", "aud": section["service"], "iat": now, "nbf": now,
              "exp": now + 900, "jti": "j1", "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}]}
    request = {"X-Original-URI": "/v2/team/app/manifests/1.0", "X-Original-Method": "GET"}

    async def status(token: str | None) -> tuple[int, str]:
        headers = {**request, **({"Authorization": f"Bearer {token}"} if token else {})}
        resp = await client.get("/v1/auth", headers=headers)
        return resp.status, resp.headers.get("WWW-Authenticate", "")

    docker_auth_token = jwt.encode(claims, key_pem, algorithm="RS256", headers={"kid": jwk["kid"]})
    assert (await status(docker_auth_token))[0] == 200
    code, challenge = await status(None)
    assert code == 401 and f'realm="{section["realm"]}"' in challenge and f'service="{section["service"]}"' in challenge
    legacy_kid = TokenIssuer(tmp_path / "other", issuer=section["issuer"], service=section["service"],
                             algorithm="RS256").mint([repository_access("team/app", ["pull"])])
    assert (await status(legacy_kid))[0] == 401
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": jwk["kid"]})
    assert (await status(forged))[0] == 401
