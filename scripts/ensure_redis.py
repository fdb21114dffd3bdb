"""`make run` helper: make sure a Redis answers at the configured URL.

If nothing answers there and the URL points at this machine and `redis-server` is installed, start a
throwaway one (no persistence) on that port and say so. It is left running for the consumer.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def main(url: str) -> int:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if answers(host, port):
        return 0
    binary = shutil.which("redis-server")
    if host not in ("127.0.0.1", "localhost", "::1") or binary is None:
        print(f"nothing answers at {url}; start Redis or set REGISTRY_CONSUMER_REDIS_URL", file=sys.stderr)
        return 1
    subprocess.run(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--daemonize", "yes", "--pidfile", f"/tmp/registry-consumer-redis-{port}.pid"],
        check=True,
    )
    for _ in range(50):
        if answers(host, port):
            print(f"started a throwaway redis-server on {host}:{port} (pid file "
                  f"/tmp/registry-consumer-redis-{port}.pid, no persistence)", file=sys.stderr)
            return 0
        time.sleep(0.1)
    print("redis-server did not come up", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"))
