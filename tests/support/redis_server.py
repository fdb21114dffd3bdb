"""A real redis-server on a free loopback port, owned by the test that started it."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from tests.support.procs import LOOPBACK, ManagedProcess, free_port, wait_for_port
from tests.support.tls import TlsFiles


class RedisServer:
    """Runs ``redis-server`` without persistence; ``stop``/``start`` keep the same port.

    With ``tls``, the port speaks TLS only (clients are not asked for certificates) and ``url`` is a
    ``rediss://`` URL that trusts the test CA.
    """

    def __init__(self, workdir: Path, port: int | None = None, *, tls: TlsFiles | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.port = port or free_port()
        self.workdir = workdir
        self.tls = tls
        workdir.mkdir(parents=True, exist_ok=True)
        ports = ["--port", str(self.port)] if tls is None else [
            "--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(tls.cert),
            "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no"]
        self._proc = ManagedProcess(
            "redis-server",
            [binary, "--bind", LOOPBACK, *ports, "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--maxmemory-policy", "noeviction", *extra_args],
            workdir / "redis.log",
        )

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://{LOOPBACK}:{self.port}/0?ssl_ca_certs={self.tls.ca}"
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
