"""`make run`, the README's first command, brings the service up with the example config."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.support.procs import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parents[1]


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status)
    except OSError:
        return None


def test_make_run_serves_the_example_config(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "REGISTRY_CONSUMER_LISTEN": f"{LOOPBACK}:{port}", "REGISTRY_CONSUMER_REDIS_URL": redis_url}
    log = (tmp_path / "make-run.log").open("wb")
    proc = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _status(f"http://{LOOPBACK}:{port}/readyz") != 200:
            assert proc.poll() is None, (tmp_path / "make-run.log").read_text()
            time.sleep(0.2)
        assert _status(f"http://{LOOPBACK}:{port}/readyz") == 200, (tmp_path / "make-run.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the consumer it started, by their group
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
