"""Where the webhook's time goes: the real consumer application with extra, partial copies of its webhook.

``webhook_bench.py --ladder`` drives each step like the real endpoint and compares it with the bare
baseline. Every step is the consumer's own ``create_app`` (same middleware, Redis client, revocation
cache, settings from the same environment), plus routes that stop part way through the webhook's work:

- ``/ladder/read/v1/events``: read the body, answer (the consumer's middleware and answer, nothing else);
- ``/ladder/auth/v1/events``: + the bearer token (signature cache, revocation check);
- ``/ladder/validate/v1/events``: + the envelope validated and classified;
- ``/v1/events``: the real webhook (+ dedup and the index update in Redis, listeners, metrics).

Bench-only code: the service itself has no such routes and no switches to turn its work off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from consumer.app import create_app  # noqa: E402
from consumer.appkeys import SETTINGS  # noqa: E402
from consumer.auth import SCOPE_EVENTS_WRITE, require_scope  # noqa: E402
from consumer.envelope import parse_envelope  # noqa: E402
from consumer.settings import load_settings  # noqa: E402
from consumer.webhook import read_body  # noqa: E402

STEPS = ("read", "auth", "validate")
ANSWER = b'{"applied": 1, "duplicate": 0, "ignored": 0, "dead_lettered": 0}'


def _step(name: str) -> web.Handler:
    authenticate = name in ("auth", "validate")
    validate = name == "validate"

    async def handler(request: web.Request) -> web.Response:
        if authenticate:
            await require_scope(request, SCOPE_EVENTS_WRITE)
        body = await read_body(request, request.app[SETTINGS].max_body_bytes)
        if validate and parse_envelope(body) is None:
            raise web.HTTPBadRequest(text="the ladder expects valid envelopes")
        return web.Response(body=ANSWER, content_type="application/json")

    return handler


async def _serve(listen: str) -> None:
    settings = load_settings()
    app = create_app(settings)
    for name in STEPS:
        app.router.add_post(f"/ladder/{name}/v1/events", _step(name))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()
    print(f"ladder listening on {listen}", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="host:port, e.g. 127.0.0.1:8082")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
