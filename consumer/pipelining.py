"""The webhook's hot path to Redis: the commands of concurrent requests share one pipelined round trip.

Every notification costs at least one Redis command (the index script, the revocation check), and the
registry delivers them concurrently. Measured per event (bench/RESULTS.md), redis-py's per-round-trip
machinery (pool checkout, retry wrapper, a timeout context per read, per-argument encoding) cost more
than the rest of the event together, so the hot path talks RESP itself over one connection:
hiredis packs every command of a loop turn into one write and parses the replies as they arrive.

Semantics callers rely on: each caller's commands stay in order and are sent back to back; a command's
own error comes back as its reply (an exception object, mapped to redis-py's classes); a connection
failure or a reply later than the client's ``socket_timeout`` raises redis-py's ``ConnectionError`` /
``TimeoutError`` to every caller waiting on that connection (the webhook answers 503 and the registry
redelivers). Nothing here is a transaction: callers never rely on each other's commands.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import hiredis
import redis.exceptions
from redis.asyncio import Redis

from consumer.connections import Command, Endpoint, handshake, role_name

# Error replies whose prefix redis-py maps to a narrower class; callers (and REDIS_DOWN) depend on them.
_ERROR_PREFIXES: tuple[tuple[str, type[redis.exceptions.RedisError]], ...] = (
    ("NOSCRIPT", redis.exceptions.NoScriptError),
    ("LOADING", redis.exceptions.BusyLoadingError),
    ("READONLY", redis.exceptions.ReadOnlyError),
    ("NOAUTH", redis.exceptions.AuthenticationError),
    ("WRONGPASS", redis.exceptions.AuthenticationError),
)


def _reply(value: Any) -> Any:
    if isinstance(value, redis.exceptions.ResponseError):
        message = str(value)
        for prefix, error in _ERROR_PREFIXES:
            if message.startswith(prefix):
                return error(message)
    return value


@dataclass(slots=True)
class Queued:
    """One caller's commands and the future its replies go to."""

    commands: list[Command]
    replies: asyncio.Future[list[Any]]


class Link(Protocol):
    """Sends a list of commands and returns their replies in order."""

    def try_send(self, batch: list[Queued]) -> bool:
        """Send ``batch`` now, without awaiting, if the link can (each future gets its replies later)."""
        ...

    async def execute(self, commands: list[Command]) -> list[Any]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Waiter:
    expected: int
    future: asyncio.Future[list[Any]]
    replies: list[Any] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class _RespProtocol(asyncio.Protocol):
    """Matches replies to waiters in order (Redis answers a connection's commands in order)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self.closed = False
        self._reader = hiredis.Reader(replyError=redis.exceptions.ResponseError)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiters = self.waiters
        while True:
            try:
                value = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(redis.exceptions.ConnectionError(f"Redis protocol error: {exc}"))
                return
            if value is False:
                return
            if not waiters:
                self.fail(redis.exceptions.ConnectionError("Redis sent a reply nobody asked for"))
                return
            waiter = waiters[0]
            waiter.replies.append(_reply(value))
            if len(waiter.replies) == waiter.expected:
                waiters.popleft()
                if waiter.timer is not None:
                    waiter.timer.cancel()
                if not waiter.future.done():  # its caller may have been cancelled meanwhile
                    waiter.future.set_result(waiter.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(redis.exceptions.ConnectionError(f"Redis connection lost: {exc or 'closed by the server'}"))

    def fail(self, exc: Exception) -> None:
        """Fail every waiting caller and drop the connection (replies could no longer be matched)."""
        self.closed = True
        waiters, self.waiters = self.waiters, collections.deque()
        for waiter in waiters:
            if waiter.timer is not None:
                waiter.timer.cancel()
            if not waiter.future.done():
                waiter.future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class RespLink:
    """One pipelined RESP2 connection to the Redis a redis-py client points at (TCP, TLS or unix socket).

    Connects on first use and again after any failure; callers see the failure once, as redis-py would
    raise it.
    """

    def __init__(self, endpoint: Endpoint, *, db: int = 0, username: str | None = None, password: str | None = None,
                 timeout_seconds: float | None = None, connect_timeout_seconds: float | None = None,
                 client_name: str | None = None) -> None:
        self._endpoint = endpoint
        self._handshake = handshake(username=username, password=password, db=db, client_name=client_name)
        self._timeout = timeout_seconds
        self._connect_timeout = connect_timeout_seconds or timeout_seconds
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def like(cls, client: Redis) -> RespLink | None:
        """A link to the same server, database and credentials as ``client``, with its timeouts, named
        ``<client's name>:webhook``; None when ``client`` connects in a way this link does not speak."""
        endpoint = Endpoint.of(client)
        if endpoint is None:
            return None
        kw = client.connection_pool.connection_kwargs
        return cls(endpoint, db=int(kw.get("db", 0) or 0), username=kw.get("username"), password=kw.get("password"),
                   timeout_seconds=kw.get("socket_timeout"), connect_timeout_seconds=kw.get("socket_connect_timeout"),
                   client_name=role_name(client, "webhook"))

    def try_send(self, batch: list[Queued]) -> bool:
        """Write every command of ``batch`` in one write if connected; False (nothing sent) if not."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            return False
        self._write(protocol, batch)
        return True

    async def execute(self, commands: list[Command]) -> list[Any]:
        """The replies to ``commands``, in order; error replies are returned, not raised."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        return await self._request(protocol, commands)

    async def _request(self, protocol: _RespProtocol, commands: list[Command]) -> list[Any]:
        queued = Queued(commands, asyncio.get_running_loop().create_future())
        self._write(protocol, [queued])
        return await queued.replies

    def _write(self, protocol: _RespProtocol, batch: list[Queued]) -> None:
        assert protocol.transport is not None
        pack = hiredis.pack_command
        protocol.transport.write(b"".join([pack(c) for q in batch for c in q.commands]))  # type: ignore[arg-type]
        waiters = [_Waiter(len(q.commands), q.replies) for q in batch]
        protocol.waiters.extend(waiters)
        if self._timeout is not None:
            # Replies come in order: when the batch's last one is late, so is the connection.
            last = waiters[-1]
            last.timer = asyncio.get_running_loop().call_later(self._timeout, self._expire, protocol, last)

    @staticmethod
    def _expire(protocol: _RespProtocol, waiter: _Waiter) -> None:
        if len(waiter.replies) < waiter.expected:
            protocol.fail(redis.exceptions.TimeoutError("Timeout reading from Redis"))

    async def _connect(self) -> _RespProtocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol  # another caller connected meanwhile
            try:
                async with asyncio.timeout(self._connect_timeout):
                    _, protocol = await self._endpoint.connect(_RespProtocol)
                    if self._handshake:
                        for reply in await self._request(protocol, self._handshake):
                            if isinstance(reply, Exception):
                                protocol.fail(redis.exceptions.ConnectionError("handshake failed"))
                                raise reply
            except TimeoutError as exc:
                raise redis.exceptions.TimeoutError("Timeout connecting to Redis") from exc
            except OSError as exc:
                raise redis.exceptions.ConnectionError(f"Error connecting to Redis: {exc}") from exc
            self._protocol = protocol
            return protocol

    async def aclose(self) -> None:
        """Close the connection; callers still waiting get ``ConnectionError``."""
        if self._protocol is not None and not self._protocol.closed:
            assert self._protocol.transport is not None
            self._protocol.transport.close()
        self._protocol = None


class RedisPyLink:
    """The same contract through a redis-py client's pool (for connection classes RespLink does not speak)."""

    def __init__(self, client: Redis) -> None:
        self._client = client

    def try_send(self, batch: list[Queued]) -> bool:
        """Never: redis-py's pipeline is awaited (the caller falls back to :meth:`execute`)."""
        return False

    async def execute(self, commands: list[Command]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))

    async def aclose(self) -> None:
        """Nothing to close: the connections belong to the client's pool."""


def link_for(client: Redis) -> Link:
    """The fastest link that reaches the same Redis as ``client``."""
    return RespLink.like(client) or RedisPyLink(client)


class SharedPipeline:
    """Sends the commands of every caller that arrives within one event-loop turn in one write.

    The webhook handles many deliveries at once; each caller's commands stay in order and each script
    stays one atomic EVALSHA; only the round trip is shared.
    """

    def __init__(self, link: Link) -> None:
        self._link = link
        self._queue: list[Queued] = []
        self._flushes: set[asyncio.Task[None]] = set()

    @classmethod
    def over(cls, client: Redis) -> SharedPipeline:
        """A pipeline with its own link to ``client``'s Redis (close it with :meth:`aclose`)."""
        return cls(link_for(client))

    async def send(self, commands: list[Command]) -> list[Any]:
        """The replies to ``commands``, in order; a command's Redis error is returned as its reply.

        Connection errors and timeouts are raised (to every caller that shared the round trip).
        """
        loop = asyncio.get_running_loop()
        queued = Queued(commands, loop.create_future())
        if not self._queue:
            # Flushed on the next loop turn, after every handler that is ready now has queued. A plain
            # callback, not a task: with the link connected, the write needs no await.
            loop.call_soon(self._flush)
        self._queue.append(queued)
        return await queued.replies

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        try:
            sent = self._link.try_send(batch)
        except Exception as exc:  # e.g. an argument RESP cannot carry: nothing was written
            # A loop callback's exception would only be logged, leaving every caller waiting forever.
            for queued in batch:
                if not queued.replies.done():
                    queued.replies.set_exception(exc)
            return
        if not sent:
            flush = asyncio.create_task(self._flush_awaiting(batch))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    async def _flush_awaiting(self, batch: list[Queued]) -> None:
        """The batch through ``execute`` (the link connects first, or is redis-py's)."""
        commands = [command for queued in batch for command in queued.commands]
        try:
            replies = await self._link.execute(commands)
        except asyncio.CancelledError:
            for queued in batch:
                queued.replies.cancel()
            raise
        except Exception as exc:
            for queued in batch:
                if not queued.replies.done():
                    queued.replies.set_exception(exc)
            return
        offset = 0
        for queued in batch:
            if not queued.replies.done():  # its caller may have been cancelled meanwhile
                queued.replies.set_result(replies[offset:offset + len(queued.commands)])
            offset += len(queued.commands)

    async def aclose(self) -> None:
        """Wait for batches in flight, then close the link."""
        if self._flushes:
            await asyncio.wait(set(self._flushes), timeout=1.0)
        await self._link.aclose()
