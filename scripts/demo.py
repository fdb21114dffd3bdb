"""``make demo``: the docker-compose topology, natively, on free loopback ports.

Debian's ``docker-registry`` (notifications to the consumer, debug metrics on), ``redis-server``, the consumer
(``python -m consumer serve`` with a policy that fixes ``latest`` and plans retention as a dry run) and
``prometheus`` (scraping both, with config/prometheus/alerts.yml). Then, with skopeo and the registry's API:

1. pushes a few versions of ``demo/app`` and a ``latest`` that points at the wrong one, and shows the index;
2. shows the consumer fixing ``latest`` (read back from the registry itself);
3. shows the retention plan (dry run: nothing is deleted);
4. deletes a manifest by hand, and shows the unexpected deletion: metric, audit record, Prometheus alert.

It prints where each service listens (and its pid), then waits; Ctrl-C (SIGINT) or SIGTERM stops every
process it started, by pid, and it exits 0. ``--exit-after-steps`` stops after the steps instead (exit 1 when
a step failed). The processes are driven with the test harness' helpers (tests/support), the same code the
end-to-end tests prove against these programs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python scripts/demo.py` from anywhere
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import yaml  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.support import oci, skopeo  # noqa: E402
from tests.support.procs import LOOPBACK, ManagedProcess, free_port, wait_for_port  # noqa: E402
from tests.support.prometheus import PrometheusServer  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.registry import NotificationEndpoint, RegistryServer, bearer_headers  # noqa: E402

REPOSITORY = "demo/app"
VERSIONS = ("1.0.0", "1.1.0", "2.0.0")
STEP_TIMEOUT_SECONDS = 60.0
STEPS_DONE = "demo steps done"
ALERT_RULES = ROOT / "config" / "prometheus" / "alerts.yml"


def say(text: str = "") -> None:
    print(text, flush=True)


class StepFailed(Exception):
    """A demo step did not see what it shows; the message says what was expected."""


async def eventually(what: str, probe: Callable[[], Awaitable[Any]]) -> Any:
    """Poll ``probe`` until it returns something truthy; StepFailed after STEP_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + STEP_TIMEOUT_SECONDS
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise StepFailed(f"not seen within {STEP_TIMEOUT_SECONDS:.0f}s: {what}")
        await asyncio.sleep(0.2)


class Topology:
    """The four services; each one started is stopped (by pid) in ``stop``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.secret = secrets.token_urlsafe(32)
        self.consumer_port = free_port()
        self.consumer_url = f"http://{LOOPBACK}:{self.consumer_port}"
        self.config_path = workdir / "consumer.yaml"
        self.redis = RedisServer(workdir / "redis")
        self.consumer: ManagedProcess | None = None
        self.registry: RegistryServer | None = None
        self.prometheus: PrometheusServer | None = None
        self.reader_token = ""

    def _consumer_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_CONSUMER_")}
        env["REGISTRY_CONSUMER_CONFIG"] = str(self.config_path)
        return env

    def _mint(self, sub: str, scope: str) -> str:
        """A consumer token, made the way an operator makes one: ``registry-consumer token mint``."""
        result = subprocess.run(
            [sys.executable, "-m", "consumer", "token", "mint", "--sub", sub, "--scope", scope, "--ttl", "1d"],
            env=self._consumer_env(), cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )
        return result.stdout.strip()

    def _write_consumer_config(self, registry_url: str) -> None:
        config = {
            "listen": f"{LOOPBACK}:{self.consumer_port}",
            "redis_url": self.redis.url,
            "jwt_secret": self.secret,
            "log_level": "INFO",
            "stats_interval_seconds": 1,
            "registry": {"url": registry_url},
            "policies": [
                {
                    "repositories": ["demo/*"],
                    "latest": {"mode": "highest-semver", "action": "fix"},
                    "retention": {"dry_run": True, "keep": [{"semver_latest": 2}], "protected": ["latest"]},
                }
            ],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.config_path.chmod(0o600)  # it holds the demo's signing secret

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis.start()
        # The registry's address goes into the consumer's config, the consumer's into the registry's.
        self._write_consumer_config("http://placeholder.invalid")
        webhook_token = self._mint("registry", "events:write")
        self.reader_token = self._mint("demo", "index:read")
        endpoint = NotificationEndpoint(f"{self.consumer_url}/v1/events", headers=bearer_headers(webhook_token))
        self.registry = RegistryServer(self.workdir / "registry", notifications=[endpoint])
        self._write_consumer_config(self.registry.url)
        self.consumer = ManagedProcess(
            "consumer", [sys.executable, "-m", "consumer", "serve"], self.workdir / "consumer.log",
            env=self._consumer_env(), cwd=ROOT,
        )
        self.consumer.start()
        wait_for_port(LOOPBACK, self.consumer_port, timeout=30, process=self.consumer)
        self.registry.start()
        self.prometheus = PrometheusServer(
            self.workdir / "prometheus",
            scrape_configs=[
                {"job_name": job, "static_configs": [{"targets": [f"{LOOPBACK}:{port}"]}]}
                for job, port in (("registry-consumer", self.consumer_port), ("registry", self.registry.debug_port))
            ],
            rule_files=[ALERT_RULES],
            scrape_interval="2s",
        )
        self.prometheus.start()

    async def first_scrape(self) -> None:
        """Prometheus has the counters at 0 before anything happens, so increase() and the alerts see it."""
        assert self.prometheus is not None
        prometheus = self.prometheus

        async def scraped() -> bool:
            jobs = {s["metric"]["job"] for s in prometheus.query("up == 1").samples}
            return jobs >= {"registry-consumer", "registry"}

        await eventually("Prometheus scraping the consumer and the registry", scraped)

    def pids(self) -> dict[str, int | None]:
        return {
            "redis-server": self.redis._proc.pid if self.redis.running else None,
            "consumer": self.consumer.pid if self.consumer is not None and self.consumer.running else None,
            "docker-registry": self.registry.pid if self.registry is not None else None,
            "prometheus": self.prometheus._proc.pid if self.prometheus is not None else None,
        }

    def describe(self) -> None:
        assert self.registry is not None and self.prometheus is not None
        pids = self.pids()
        say("Services (all on loopback; stop with Ctrl-C):")
        say(f"  registry     {self.registry.url}  (debug/metrics {self.registry.metrics_url}; never expose it: "
            f"/debug/vars shows the webhook token)  pid {pids['docker-registry']}")
        say(f"  consumer     {self.consumer_url}  (token with index:read: {self.reader_token})  pid {pids['consumer']}")
        say(f"  redis        {self.redis.url}  pid {pids['redis-server']}")
        say(f"  prometheus   {self.prometheus.url}  (alerts: {self.prometheus.url}/alerts)  pid {pids['prometheus']}")
        say(f"  logs and config in {self.workdir}")

    def stop(self) -> None:
        """Every process this demo started, in the reverse order, by pid."""
        for name, stop in (
            ("prometheus", self.prometheus.stop if self.prometheus else None),
            ("docker-registry", self.registry.stop if self.registry else None),
            ("consumer", self.consumer.stop if self.consumer else None),
            ("redis-server", self.redis.stop),
        ):
            if stop is not None:
                with contextlib.suppress(Exception):
                    stop()
                say(f"stopped {name}")


class Steps:
    """The four steps, against the consumer's HTTP API, the registry's API and Prometheus' API."""

    def __init__(self, topology: Topology, session: aiohttp.ClientSession) -> None:
        assert topology.registry is not None and topology.prometheus is not None
        self.t = topology
        self.registry = topology.registry
        self.prometheus = topology.prometheus
        self.session = session
        self.headers = {"Authorization": f"Bearer {topology.reader_token}"}
        self.digests: dict[str, str] = {}

    async def api(self, path: str) -> tuple[int, Any]:
        async with self.session.get(f"{self.t.consumer_url}{path}", headers=self.headers) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body

    async def tags(self) -> dict[str, str]:
        status, body = await self.api(f"/v1/repositories/{REPOSITORY}/tags")
        return {t["tag"]: t["digest"] for t in body["tags"]} if status == 200 else {}

    async def push_and_index(self) -> None:
        layout = self.t.workdir / "images"
        for number, version in enumerate(VERSIONS):
            image = oci.write_image(layout, f"v{number}")
            self.digests[version] = await skopeo.push(image, self.registry, REPOSITORY, version)
            say(f"  pushed {REPOSITORY}:{version}  {self.digests[version][:19]}")
        # Someone points latest at an old version: the policy says it follows the highest version.
        await skopeo.retag(self.registry, REPOSITORY, "1.0.0", "latest")
        say(f"  pushed {REPOSITORY}:latest -> 1.0.0 (not the highest version)")
        wanted = set(VERSIONS) | {"latest"}
        tags = await eventually("every tag in the consumer's index", lambda: self._tags_if(wanted))
        say(f"  GET /v1/repositories/{REPOSITORY}/tags:")
        for tag, digest in sorted(tags.items()):
            say(f"    {tag:8} {digest[:19]}")

    async def _tags_if(self, wanted: set[str]) -> dict[str, str] | None:
        tags = await self.tags()
        return tags if set(tags) >= wanted else None

    async def latest_fixed(self) -> None:
        highest = self.digests[VERSIONS[-1]]

        async def fixed() -> dict[str, Any] | None:
            status, body = await self.api(f"/v1/repositories/{REPOSITORY}/latest")
            if status != 200:
                raise StepFailed(f"GET /v1/repositories/{REPOSITORY}/latest answered {status}: {body}")
            in_registry = await self.registry.head_digest(REPOSITORY, "latest")
            return body if body["digest"] == highest and not body["stale"] and in_registry == highest else None

        body = await eventually(f"latest moved to {VERSIONS[-1]} in the registry", fixed)
        say(f"  GET /v1/repositories/{REPOSITORY}/latest: {json.dumps(body)}")
        say(f"  registry: HEAD {REPOSITORY}:latest = {highest[:19]} ({VERSIONS[-1]})")
        _, audit = await self.api(f"/v1/audit?repository={REPOSITORY}&kind=latest_fix")
        for record in audit.get("records", [])[:1] if isinstance(audit, dict) else []:
            say(f"  audit: {json.dumps(record)}")

    async def retention_plan(self) -> None:
        status, body = await self.api(f"/v1/repositories/{REPOSITORY}/retention")
        if status != 200:
            raise StepFailed(f"GET /v1/repositories/{REPOSITORY}/retention answered {status}: {body}")
        say(f"  GET /v1/repositories/{REPOSITORY}/retention (dry run, keep the 2 highest versions and latest):")
        say("  " + json.dumps(body, indent=2).replace("\n", "\n  "))
        if "1.0.0" not in json.dumps(body):
            raise StepFailed("the plan does not mention 1.0.0, the version outside the two highest")

    async def unexpected_deletion(self) -> None:
        victim = "1.1.0"
        await self.registry.delete_manifest(REPOSITORY, self.digests[victim])
        say(f"  DELETE {REPOSITORY}@{self.digests[victim][:19]} ({victim}) straight at the registry API")

        async def counted() -> float:
            async with self.session.get(f"{self.t.consumer_url}/metrics") as resp:
                text = await resp.text()
            return sum(
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "registry_consumer_unexpected_deletions_total"
            )

        total = await eventually("registry_consumer_unexpected_deletions_total > 0", counted)
        say(f"  metric registry_consumer_unexpected_deletions_total = {total:.0f}")

        async def recorded() -> list[Any]:
            _, body = await self.api(f"/v1/audit?repository={REPOSITORY}&kind=unexpected_deletion")
            return body.get("records", []) if isinstance(body, dict) else []

        records = await eventually("an unexpected_deletion audit record", recorded)
        say(f"  GET /v1/audit?kind=unexpected_deletion: {json.dumps(records[0])}")

        async def firing() -> list[Any]:
            result = self.prometheus.query('ALERTS{alertname=~"RegistryConsumerUnexpected.*",alertstate="firing"}')
            return result.samples

        alerts = await eventually("the unexpected-deletion alert firing in Prometheus", firing)
        say(f"  Prometheus: {alerts[0]['metric']['alertname']} firing ({self.prometheus.url}/alerts)")

    async def run(self) -> int:
        failed = 0
        for number, (title, step) in enumerate(
            [
                ("push a few versions, show the index", self.push_and_index),
                ("the consumer fixes latest", self.latest_fixed),
                ("a retention plan (dry run)", self.retention_plan),
                ("an unexpected deletion", self.unexpected_deletion),
            ],
            start=1,
        ):
            say(f"== step {number}: {title}")
            try:
                await step()
            except (StepFailed, skopeo.SkopeoError, aiohttp.ClientError, KeyError, ValueError) as exc:
                failed += 1
                say(f"-> step {number} FAILED: {exc}")
            else:
                say(f"-> step {number} ok")
        return failed


async def main(exit_after_steps: bool, workdir: Path) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    current = asyncio.current_task()
    assert current is not None
    steps_finished = False

    def on_signal(signum: int) -> None:
        say(f"{signal.Signals(signum).name}: stopping")
        stop.set()
        if not steps_finished:
            current.cancel()  # interrupt the bring-up or a step; everything started is stopped below

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    topology = Topology(workdir)
    failed = 0
    try:
        say("Starting redis-server, the consumer, docker-registry and prometheus ...")
        await asyncio.to_thread(topology.start)
        topology.describe()
        await topology.first_scrape()
        async with aiohttp.ClientSession() as session:
            failed = await Steps(topology, session).run()
        steps_finished = True
        say(f"{STEPS_DONE}: {4 - failed} ok, {failed} failed")
        topology.describe()
        if not exit_after_steps:
            say("Waiting; Ctrl-C stops everything.")
            await stop.wait()
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
    finally:
        await asyncio.to_thread(topology.stop)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if stop.is_set():
        return 0
    return 1 if failed else 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exit-after-steps", action="store_true",
                        default=os.environ.get("DEMO_EXIT_AFTER_STEPS") == "1",
                        help="stop everything once the steps are done (also DEMO_EXIT_AFTER_STEPS=1)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep logs, config and data here (default: a temporary directory, removed at exit)")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        return asyncio.run(main(args.exit_after_steps, args.workdir))
    with tempfile.TemporaryDirectory(prefix="registry-consumer-demo-") as tmp:
        return asyncio.run(main(args.exit_after_steps, Path(tmp)))


if __name__ == "__main__":
    raise SystemExit(cli())
