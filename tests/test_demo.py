"""``make demo`` brings the native topology up, does its four steps, and stops everything on Ctrl-C.

Ctrl-C is what a terminal does: SIGINT to the foreground process group (here: make, the demo and any skopeo
running). The demo's services run in sessions of their own, so only the demo can stop them; the test then
checks, by the pids the demo printed, that none of them is left.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_SECONDS = 240.0
SERVICES = ("registry", "consumer", "redis", "prometheus")
PID_LINE = re.compile(r"^  (?P<service>registry|consumer|redis|prometheus) .* pid (?P<pid>\d+)$")

pytestmark = pytest.mark.e2e


class Demo:
    """The demo as a child process group, its output collected line by line."""

    def __init__(self, argv: list[str], **env: str) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_CONSUMER_", "DEMO_", "MAKE"))}
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env={**clean, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, prefix: str) -> str:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"the demo never printed {prefix!r}:\n" + "\n".join(self.lines))

    def finish(self) -> int:
        code = self.proc.wait(timeout=DEADLINE_SECONDS)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code

    def service_pids(self) -> dict[str, int]:
        pids = {}
        for line in self.lines:
            match = PID_LINE.match(line)
            if match:
                pids[match["service"]] = int(match["pid"])
        return pids

    def kill_group(self) -> None:
        """Teardown: whatever is left of the group (never needed when the test passes)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Demo]]:
    demos: list[Demo] = []
    yield demos
    for demo in demos:
        demo.kill_group()
        for pid in demo.service_pids().values():  # never leave a service behind, even on failure
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def check_steps(demo: Demo) -> dict[str, int]:
    done = demo.wait_for_line("demo steps done")
    log = "\n".join(demo.lines)
    assert done == "demo steps done: 4 ok, 0 failed", log
    for number in range(1, 5):
        assert f"-> step {number} ok" in demo.lines, log
    # The steps show what they claim: the index, latest moved, the plan, the unexpected deletion.
    assert any(re.match(r"^    latest +sha256:", line) for line in demo.lines), log
    assert any('"expected_tag": "2.0.0", "stale": false' in line for line in demo.lines), log
    assert '"decision": "delete"' in log and "registry_consumer_unexpected_deletions_total = 1" in log, log
    pids = demo.service_pids()
    assert set(pids) == set(SERVICES), log
    return pids


def test_make_demo_does_its_steps_and_stops_everything(started: list[Demo]) -> None:
    """The make target, told to stop after its steps (DEMO_EXIT_AFTER_STEPS=1, as a CI job would run it)."""
    demo = Demo(["make", "--no-print-directory", "-s", "demo"], DEMO_EXIT_AFTER_STEPS="1")
    started.append(demo)
    pids = check_steps(demo)
    assert demo.finish() == 0, "\n".join(demo.lines)
    assert not [name for name, pid in pids.items() if alive(pid)], "a service outlived the demo"


def test_ctrl_c_stops_every_service_and_exits_0(tmp_path: Path, started: list[Demo]) -> None:
    """Ctrl-C is SIGINT to the foreground process group: here the demo (group leader) and any skopeo.

    (Through make, make itself dies of that SIGINT after the demo exited 0, as it always does on Ctrl-C.)
    """
    demo = Demo([sys.executable, "scripts/demo.py", "--workdir", str(tmp_path / "demo")])
    started.append(demo)
    pids = check_steps(demo)
    demo.wait_for_line("Waiting; Ctrl-C stops everything.")
    # Only a waiting demo is bound to have its services up: told to exit after its steps, it may already be
    # stopping them by the time the test reads "demo steps done".
    assert all(alive(pid) for pid in pids.values()), "every service runs while the demo waits"
    os.killpg(demo.proc.pid, signal.SIGINT)
    assert demo.finish() == 0, "\n".join(demo.lines)
    assert [line for line in demo.lines if line.startswith("stopped ")] == [
        "stopped prometheus", "stopped docker-registry", "stopped consumer", "stopped redis-server"
    ]
    assert not [name for name, pid in pids.items() if alive(pid)], "a service outlived the demo"
    assert (tmp_path / "demo" / "consumer.log").is_file()
