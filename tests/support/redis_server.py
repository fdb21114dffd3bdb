"""A real redis-server on a free loopback port, owned by the test that started it."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.procs import LOOPBACK, ManagedProcess, free_port, wait_for_port


class RedisServer:
    """Runs ``redis-server`` without persistence; ``stop``/``start`` keep the same port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._proc = ManagedProcess(
            "redis-server",
            [binary, "--bind", LOOPBACK, "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--maxmemory-policy", "noeviction"],
            workdir / "redis.log",
        )

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc.running

    def start(self) -> None:
        self._proc.start()
        wait_for_port(LOOPBACK, self.port, timeout=10, process=self._proc)

    def stop(self) -> None:
        self._proc.stop()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
