"""Running the service in a process: listen, and on SIGTERM or SIGINT shut down gracefully.

The order is what whoever routes traffic here relies on:

1. ``/readyz`` turns 503 at once, while the listener stays open for ``shutdown_delay_seconds`` so that load
   balancers (Kubernetes endpoints, a readiness-checking proxy) notice and stop sending new requests;
   a second signal cuts this delay short;
2. the listener closes and idle connections are closed; requests in flight get ``shutdown_timeout_seconds``
   to finish, then are cancelled;
3. the application's cleanup runs: event-hook listeners still working (latest fixes, retention actions) get
   up to ``shutdown_timeout_seconds`` more, one budget shared by all cleanup (``ServiceState.cleanup_seconds``;
   a background loop's round gets at most ``LOOP_CLOSE_SECONDS`` of it, as it starts again after a restart;
   plus at most a second for each that ignores its cancellation), then Redis is closed.

So the process exits within ``shutdown_delay_seconds + 2 * shutdown_timeout_seconds`` of the first signal,
with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from consumer.app import create_app, mark_shutting_down
from consumer.settings import Settings

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Signals:
    """The first stop signal starts the shutdown; a later one ends the readiness delay early."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()

    def received(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            log.info("second %s: skipping the rest of the shutdown delay", name)
            self.hurry.set()
        else:
            log.info("%s received: shutting down", name)
            self.stop.set()


async def serve(settings: Settings) -> None:
    """Serve ``settings.listen`` until a stop signal, then shut down in the order above."""
    loop = asyncio.get_running_loop()
    signals = _Signals()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, signals.received, signum)
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=settings.shutdown_timeout_seconds)
    try:
        await runner.setup()
        await web.TCPSite(runner, settings.listen_host, settings.listen_port).start()
        print(f"registry-consumer listening on {settings.listen}", file=sys.stderr, flush=True)
        await signals.stop.wait()
        mark_shutting_down(app)
        if settings.shutdown_delay_seconds > 0:
            log.info("readiness is off; closing the listener in %ss", settings.shutdown_delay_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signals.hurry.wait(), settings.shutdown_delay_seconds)
    finally:
        await runner.cleanup()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    log.info("stopped")
