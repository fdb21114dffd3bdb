"""How the consumer's processes connect to Redis: one place for the timeouts and for the connection names.

Names are for operators: ``CLIENT LIST`` on a shared Redis tells the consumer's connections from
everybody else's, and which part of the consumer holds each (``registry-consumer`` for the pool,
``registry-consumer:webhook`` for the webhook's pipelined connection, ``registry-consumer:revocations`` for
the revocation channel, ``registry-consumer:cli`` / ``:reconcile`` for one-off commands).
"""

from __future__ import annotations

from redis.asyncio import Redis

from consumer.settings import Settings

Command = tuple[str | int, ...]
CLIENT_NAME = "registry-consumer"


def open_redis(settings: Settings, *, role: str | None = None, min_timeout_seconds: float = 0.0) -> Redis:
    """A redis-py client for ``settings.redis_url``, named ``registry-consumer[:role]``.

    ``min_timeout_seconds``: for one-off commands whose replies may take longer than the webhook's budget.
    """
    timeout = max(settings.redis_timeout_seconds, min_timeout_seconds)
    return Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                          client_name=f"{CLIENT_NAME}:{role}" if role else CLIENT_NAME)


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
