"""How the consumer's processes connect to Redis: one place for the timeouts and for the connection names.

Names are for operators: ``CLIENT LIST`` on a shared Redis tells the consumer's connections from
everybody else's, and which part of the consumer holds each (``registry-consumer`` for the pool,
``registry-consumer:webhook`` for the webhook's pipelined connection, ``registry-consumer:revocations`` for
the revocation channel, ``registry-consumer:cli`` / ``:reconcile`` / ``:check`` for one-off commands;
``redis_client_name`` changes the prefix, "" names nothing).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from consumer.settings import Settings

Command = tuple[str | int, ...]
P = TypeVar("P", bound=asyncio.Protocol)


def open_redis(settings: Settings, *, role: str | None = None, min_timeout_seconds: float = 0.0) -> Redis:
    """A redis-py client for ``settings.redis_url``, named ``<redis_client_name>[:role]`` (unnamed if "").

    ``min_timeout_seconds``: for one-off commands whose replies may take longer than the webhook's budget.
    """
    timeout = max(settings.redis_timeout_seconds, min_timeout_seconds)
    name = settings.redis_client_name
    return Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                          client_name=(f"{name}:{role}" if role else name) if name else None)


def handshake(*, username: str | None = None, password: str | None = None, db: int = 0,
              client_name: str | None = None) -> list[Command]:
    """What a raw connection (not redis-py's) sends before anything else, as redis-py's own connections do."""
    commands: list[Command] = []
    if password is not None:
        commands.append(("AUTH", *([username] if username else []), password))
    if db:
        commands.append(("SELECT", db))
    if client_name:
        commands.append(("CLIENT", "SETNAME", client_name))
    return commands


def role_name(client: Redis, role: str) -> str | None:
    """``client``'s connection name with ``role`` appended, for a connection of its own (None if unnamed)."""
    name = client.connection_pool.connection_kwargs.get("client_name")
    return f"{name}:{role}" if name else None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a connection of the consumer's own (not from redis-py's pool) goes: TCP, TLS or a unix socket."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    tls: ssl.SSLContext | None = None

    @classmethod
    def of(cls, client: Redis) -> Endpoint | None:
        """The server ``client``'s pool connects to, with the TLS context redis-py builds from the URL's
        ``ssl_*`` settings (so both kinds of connection verify the server alike); None for a connection class
        this module does not know (redis-py then keeps the work)."""
        pool = client.connection_pool
        kw = pool.connection_kwargs
        if pool.connection_class is UnixDomainSocketConnection:
            return cls(path=kw["path"])
        if pool.connection_class is Connection:
            return cls(kw.get("host", "localhost"), int(kw.get("port", 6379)))
        if pool.connection_class is SSLConnection:
            # A connection object is only configuration until it connects; redis-py's defaults (hostname
            # checks, certificate requirements) differ between its versions, so let it decide.
            context = SSLConnection(**kw).ssl_context.get()
            return cls(kw.get("host", "localhost"), int(kw.get("port", 6379)), tls=context)
        return None

    async def connect(self, factory: Callable[[], P]) -> tuple[asyncio.Transport, P]:
        """Open a connection served by the protocol ``factory`` makes."""
        loop = asyncio.get_running_loop()
        if self.path is not None:
            transport, protocol = await loop.create_unix_connection(factory, self.path)
        else:
            transport, protocol = await loop.create_connection(
                factory, self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None)
        return transport, protocol
