"""The bench's yardstick: a bare aiohttp endpoint that reads the webhook body and answers 200.

It runs exactly like ``registry-consumer serve`` does (one process, ``web.run_app``, access log off,
the same default body limit), so the ratio to it measures the consumer's own work per event:
authentication, validation, the dedup + index script in Redis, metrics.
"""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

MAX_BODY_BYTES = 1_048_576  # the consumer's default ``max_body_bytes``
# A small fixed JSON answer, about the size of the consumer's ``{"applied": 1, ...}``.
ANSWER = b'{"applied": 1, "duplicate": 0, "ignored": 0, "dead_lettered": 0}'


async def receive_events(request: web.Request) -> web.Response:
    """Read the whole body (as the consumer must) and answer 200."""
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


def create_app() -> web.Application:
    """The baseline application: one route, no middlewares."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/v1/events", receive_events)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port, e.g. 127.0.0.1:8081")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    web.run_app(
        create_app(),
        host=host,
        port=int(port),
        access_log=None,
        print=lambda _msg: print(f"baseline listening on {args.listen}", file=sys.stderr),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
