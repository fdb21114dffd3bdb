"""Process and port helpers shared by the real-parts test harness.

Every helper here stops what it started by pid; nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

LOOPBACK = "127.0.0.1"


class ProcessFailedError(RuntimeError):
    """A managed process died or never became ready; the message carries its log tail."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The kernel picks it; there is a small window before the caller binds it, which is fine for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    """Tell whether a TCP connect to ``host:port`` succeeds now."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_for_port(host: str, port: int, timeout: float = 15.0, process: ManagedProcess | None = None) -> None:
    """Block until ``host:port`` accepts connections, or raise after ``timeout`` seconds.

    When ``process`` is given, fail early (with its log) if it exits while we wait.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if process is not None and not process.running:
            raise ProcessFailedError(
                f"{process.name} exited with {process.returncode} before {host}:{port} opened\n"
                f"{process.log_tail()}"
            )
        time.sleep(0.05)
    tail = process.log_tail() if process is not None else ""
    raise ProcessFailedError(f"nothing listened on {host}:{port} within {timeout}s\n{tail}")


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the test process dies.

    A test run killed by a timeout never reaches its fixtures' teardown; without this its servers
    would outlive it. Only the child's own death signal is set, nothing else is touched.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class ManagedProcess:
    """A child process with its stdout and stderr in a log file, stopped by its own pid.

    The child runs in its own session so a Ctrl-C aimed at pytest does not reach it first, and so
    that stopping it never touches anything else on the machine.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The child's pid while it has been started, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child has been started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited."""
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> None:
        """Spawn the child; its output is appended to ``log_path``."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            # The death signal follows the thread that forks, so it is only safe from the main thread.
            preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the child by pid, then SIGKILL it if it has not exited within ``timeout``.

        Returns the exit status (None if it was never started). Safe to call twice.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last ``max_bytes`` of the child's log, for error messages."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[-max_bytes:].decode("utf-8", "replace")

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_checked(
    argv: Sequence[str], timeout: float = 120.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion; raise with its stderr when it fails."""
    try:
        result = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProcessFailedError(f"{argv[0]} timed out after {timeout}s: {' '.join(argv)}") from exc
    if result.returncode != 0:
        raise ProcessFailedError(
            f"{' '.join(argv)} exited {result.returncode}\nstderr:\n{result.stderr}\nstdout:\n{result.stdout}"
        )
    return result
