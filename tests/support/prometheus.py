"""A real Prometheus (Debian's ``prometheus``) on a free loopback port, owned by the test that started it.

Used to evaluate PromQL exactly as the server parses it: the dashboard's panel queries today (a parse error
answers 400 ``bad_data``), and a consumer scraped for real by the live dashboard test.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.procs import LOOPBACK, ManagedProcess, ProcessFailedError, free_port


@dataclass(frozen=True)
class QueryResult:
    """The answer of /api/v1/query: HTTP status and the decoded JSON body."""

    http_status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.http_status == 200 and self.body.get("status") == "success"

    @property
    def error(self) -> str:
        return f"{self.body.get('errorType', '')}: {self.body.get('error', '')}"

    @property
    def samples(self) -> list[Any]:
        """The result vector/matrix (empty for a scalar or an error)."""
        data = self.body.get("data", {})
        result = data.get("result", [])
        return result if data.get("resultType") in ("vector", "matrix") else []


class PrometheusServer:
    """Runs ``prometheus`` with a generated config in ``workdir``; stopped by pid.

    ``scrape_configs`` are Prometheus scrape_config mappings (an empty list scrapes nothing);
    ``rule_files`` are loaded as they are.
    """

    def __init__(
        self,
        workdir: Path,
        scrape_configs: Sequence[Mapping[str, Any]] = (),
        rule_files: Sequence[Path] = (),
        scrape_interval: str = "1s",
    ) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (make system-deps installs Debian's package)")
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [dict(sc) for sc in scrape_configs],
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._proc = ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            workdir / "prometheus.log",
        )

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout_seconds: float = 30.0) -> None:
        """Start and wait until /-/ready answers 200."""
        self._proc.start()
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if not self._proc.running:
                raise ProcessFailedError(f"prometheus exited early\n{self._proc.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self._proc.stop()
        raise ProcessFailedError(f"prometheus not ready within {timeout_seconds}s\n{self._proc.log_tail()}")

    def stop(self) -> None:
        self._proc.stop()

    def log_tail(self) -> str:
        return self._proc.log_tail()

    def _get(self, path: str, params: Mapping[str, str]) -> QueryResult:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return QueryResult(response.status, json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            with exc:
                return QueryResult(exc.code, json.loads(exc.read() or b"{}"))

    def query(self, expr: str) -> QueryResult:
        """Evaluate ``expr`` at the current time through /api/v1/query."""
        return self._get("/api/v1/query", {"query": expr})

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule (alerting and recording) with its health and last error, from /api/v1/rules."""
        result = self._get("/api/v1/rules", {})
        groups: list[dict[str, Any]] = result.body.get("data", {}).get("groups", [])
        return [rule for group in groups for rule in group.get("rules", [])]

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (job, instance, health, lastError)."""
        result = self._get("/api/v1/targets", {"state": "active"})
        targets: list[dict[str, Any]] = result.body.get("data", {}).get("activeTargets", [])
        return targets

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
