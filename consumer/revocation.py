"""The JWT revocation list in Redis: one token, every token of a subject, or every token, before a time.

Three kinds of entry (key names in ``consumer.rediskeys.RevocationKeys``, all in one hash slot):

- ``token``: one token, by issuer and ``jti``. The key lapses at the token's ``exp`` + leeway, when the
  verifier refuses the token anyway; a token that has expired already is not stored.
- ``subject``: a cutoff T per subject. Every token of the subject with ``iat <= T`` is revoked: a token
  issued in the very second of the revocation is revoked too (``iat`` has 1 s resolution, and a token
  minted in that second may well be the one the revocation was meant for). A replacement is minted from
  the next second on. The cutoff only moves forward (Lua) and lapses once every token it can catch has
  expired (T + the longest token lifetime the verifiers accept + leeway).
- ``all``: the same, for every token of every subject and issuer (after a signing key leaked, together
  with removing the key).

A request is checked with one ``MGET`` of the three keys that can apply to its token (the checks of
concurrent requests share a round trip). The registry sends the same token with every notification, so
an app that runs :meth:`RevocationStore.listen` keeps a "not revoked" answer for at most
``CHECK_CACHE_SECONDS`` (1 s), and only while it is subscribed to the channel every revocation publishes
on (in the same transaction or right after the write): a message drops every cached answer at once, so a
revocation made through any replica holds on every replica from its next request in practice, and after
at most 1 s always. When the subscription breaks (Redis gone), the cache is dropped and not used again
until resubscribed, so checks reach Redis, and Redis errors propagate: the error middleware answers 503,
checks fail closed. Without ``listen`` (the CLI, tests of the store) nothing is cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import hiredis
import redis.exceptions
from redis.asyncio import Redis

from consumer.connections import Endpoint, handshake, role_name
from consumer.errors import BadRequest
from consumer.pipelining import RedisPyLink, SharedPipeline
from consumer.rediskeys import RevocationKeys
from consumer.settings import Settings
from consumer.tokens import Claims

TOKEN, SUBJECT, ALL = "token", "subject", "all"
PRUNE_BATCH = 1000
# The contract: a revocation holds on every replica after at most 1 s, whatever happens to pub/sub.
CHECK_CACHE_SECONDS = 1.0
CHECK_CACHE_ENTRIES = 4096
RESUBSCRIBE_SECONDS = 0.5
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Revocation:
    """One entry of the list: what is revoked, and when the entry lapses (unix seconds)."""

    kind: str
    expires_at: int
    issuer: str | None = None
    jti: str | None = None
    subject: str | None = None
    cutoff: int | None = None


@dataclass(frozen=True, slots=True)
class RevokeOutcome:
    """What a revoke call did: ``entry`` is None when the token had expired already (nothing stored);
    ``changed`` is False when it was revoked already (or a later cutoff was in force)."""

    entry: Revocation | None
    changed: bool


def revocation_windows(settings: Settings) -> tuple[int, int]:
    """(leeway, cutoff lifetime) in seconds, covering every token any configured verifier accepts."""
    sections = [s for s in (settings.auth, settings.registry_auth) if s is not None]
    leeway = max(s.leeway_seconds for s in sections)
    return leeway, max(s.max_token_lifetime_seconds for s in sections) + leeway


def _script(redis: Redis, name: str) -> Any:
    return redis.register_script((resources.files("consumer") / "lua" / f"{name}.lua").read_text())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RevocationStore:
    """Revokes tokens and answers whether a verified token is revoked (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        keys: RevocationKeys,
        *,
        leeway_seconds: int,
        cutoff_ttl_seconds: int,
        clock: Callable[[], float] = time.time,
        pipeline: SharedPipeline | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._leeway = leeway_seconds
        self._cutoff_ttl = cutoff_ttl_seconds
        self._clock = clock
        self._raise_cutoff = _script(redis, "raise_cutoff")
        self._prune = _script(redis, "prune_revocations")
        # Checks of concurrent requests share one round trip (each is still its own MGET).
        self._pipeline = pipeline or SharedPipeline(RedisPyLink(redis))
        # (iss, jti, sub, iat) -> monotonic time until which "not revoked" may be answered from memory.
        self._not_revoked: dict[tuple[str, str, str, int], float] = {}
        self._subscribed = False
        # Bumped by every invalidation: a check whose MGET was sent before one must not cache its answer.
        self._generation = 0

    @classmethod
    def for_settings(cls, redis: Redis, keys: RevocationKeys, settings: Settings,
                     pipeline: SharedPipeline | None = None) -> RevocationStore:
        leeway, cutoff_ttl = revocation_windows(settings)
        return cls(redis, keys, leeway_seconds=leeway, cutoff_ttl_seconds=cutoff_ttl, pipeline=pipeline)

    def _now(self) -> int:
        return int(self._clock())

    async def revoke_token(self, *, issuer: str, jti: str, exp: int, subject: str | None = None) -> RevokeOutcome:
        """Revoke one token until ``exp`` + leeway; a token that has expired already is not stored."""
        expire_at = exp + self._leeway
        if expire_at <= self._now():
            return RevokeOutcome(None, changed=False)
        key = self._keys.token(issuer, jti)
        entry = json.dumps({"kind": TOKEN, "iss": issuer, "jti": jti, "sub": subject})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, b"1", exat=expire_at, nx=True)
            pipe.expireat(key, expire_at, gt=True)
            pipe.zadd(self._keys.index, {key: 0})
            pipe.zadd(self._keys.expiries, {key: expire_at}, gt=True)
            pipe.hset(self._keys.entries, key, entry)
            pipe.publish(self._keys.changed_channel, TOKEN)
            created, *_ = await pipe.execute()
        revocation = Revocation(TOKEN, expire_at, issuer=issuer, jti=jti, subject=subject)
        return RevokeOutcome(revocation, changed=bool(created))

    async def revoke_subject(self, subject: str, cutoff: int | None = None) -> RevokeOutcome:
        """Revoke every token of ``subject`` issued at or before ``cutoff`` (default: now)."""
        return await self._raise(self._keys.subject(subject), SUBJECT, subject, cutoff)

    async def revoke_all(self, cutoff: int | None = None) -> RevokeOutcome:
        """Revoke every token issued at or before ``cutoff`` (default: now), whoever holds it."""
        return await self._raise(self._keys.all, ALL, None, cutoff)

    async def _raise(self, key: str, kind: str, subject: str | None, cutoff: int | None) -> RevokeOutcome:
        now = self._now()
        wanted = now if cutoff is None else cutoff
        if not 0 < wanted <= now:
            raise BadRequest("the cutoff must be a unix time in the past (or now)")
        expire_at = wanted + self._cutoff_ttl
        entry = json.dumps({"kind": kind, "sub": subject, "cutoff": wanted})
        keys = [key, self._keys.index, self._keys.expiries, self._keys.entries]
        in_force, raised = await self._raise_cutoff(keys=keys, args=[wanted, expire_at, entry])
        await self._redis.publish(self._keys.changed_channel, kind)
        revocation = Revocation(kind, int(in_force) + self._cutoff_ttl, subject=subject, cutoff=int(in_force))
        return RevokeOutcome(revocation, changed=bool(raised))

    async def revoked_by(self, claims: Claims) -> str | None:
        """The kind of revocation that catches this verified token, or None.

        One round trip, or none when a "not revoked" answer for this token is cached (see the module
        docstring for when that is).
        """
        cache_key = (claims.iss, claims.jti, claims.sub, claims.iat)
        if self._subscribed:
            until = self._not_revoked.get(cache_key)
            if until is not None and until > time.monotonic():
                return None
        generation = self._generation
        keys = self._keys
        try:
            (replies,) = await self._pipeline.send([("MGET", keys.token(claims.iss, claims.jti),
                                                      keys.subject(claims.sub), keys.all)])
        except redis.exceptions.RedisError:
            self._invalidate()
            raise
        token, subject_cutoff, all_cutoff = replies
        if token is not None:
            return TOKEN
        if subject_cutoff is not None and claims.iat <= int(subject_cutoff):
            return SUBJECT
        if all_cutoff is not None and claims.iat <= int(all_cutoff):
            return ALL
        if self._subscribed and generation == self._generation:
            if len(self._not_revoked) >= CHECK_CACHE_ENTRIES:
                self._not_revoked.clear()
            self._not_revoked[cache_key] = time.monotonic() + CHECK_CACHE_SECONDS
        return None

    def _invalidate(self) -> None:
        self._generation += 1
        self._not_revoked.clear()

    async def listen(self, subscribed: asyncio.Event, stop: asyncio.Event, *,
                     retry_seconds: float = RESUBSCRIBE_SECONDS) -> None:
        """Keep cached check answers valid: drop them on every revocation message; cache only while subscribed.

        Runs until ``stop`` is set; sets ``subscribed`` once the first subscription is confirmed. Uses its
        own connection (a subscribed connection can do nothing else) with a plain protocol rather than
        redis-py's PubSub, for two reasons: PubSub reconnects silently, hiding the gap in which messages
        were lost; and here a message or a lost connection takes effect in the event loop's I/O callback,
        before any request handler that becomes ready in the same loop turn runs its check.
        """
        kwargs = self._redis.connection_pool.connection_kwargs
        endpoint = Endpoint.of(self._redis)
        if endpoint is None:
            log.info("revocation checks are not cached: %s connections to Redis are not supported for it",
                     self._redis.connection_pool.connection_class.__name__)
            return
        while not stop.is_set():
            channel = _Channel(self)
            try:
                timeout = kwargs.get("socket_connect_timeout") or kwargs.get("socket_timeout") or 5.0
                transport, _ = await asyncio.wait_for(endpoint.connect(functools.partial(_identity, channel)), timeout)
                try:
                    commands = handshake(username=kwargs.get("username"), password=kwargs.get("password"),
                                         client_name=role_name(self._redis, "revocations"))
                    commands.append(("SUBSCRIBE", self._keys.changed_channel))
                    transport.write(b"".join(hiredis.pack_command(c) for c in commands))  # type: ignore[arg-type]
                    await asyncio.wait_for(channel.wait_subscribed(len(commands)), timeout)
                    self._invalidate()  # whatever was published while not subscribed is unknown
                    self._subscribed = True
                    subscribed.set()
                    stopped: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
                    await asyncio.wait({stopped, channel.closed}, return_when=asyncio.FIRST_COMPLETED)
                    stopped.cancel()
                finally:
                    transport.close()
            except (OSError, TimeoutError, redis.exceptions.RedisError, hiredis.HiredisError) as exc:
                log.warning("revocation channel unavailable, checking every request in Redis: %s", exc)
            except Exception:
                log.exception("revocation channel failed, checking every request in Redis")
            finally:
                self._channel_lost()
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), retry_seconds)

    def _channel_lost(self) -> None:
        self._subscribed = False
        self._invalidate()

    async def page(self, n: int, last: str | None = None) -> tuple[list[Revocation], str | None]:
        """Up to ``n`` live entries after ``last`` (an opaque cursor), and the cursor of the next page."""
        start = "(" + last if last else "-"
        members = [_text(m) for m in await self._redis.zrangebylex(self._keys.index, start, "+", start=0, num=n + 1)]
        more = len(members) > n
        members = members[:n]
        if not members:
            return [], None
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._keys.entries, members)
            pipe.zmscore(self._keys.expiries, members)
            records, expiries = await pipe.execute()
        now = self._now()
        entries = []
        for record, expires_at in zip(records, expiries, strict=True):
            if record is None or expires_at is None or expires_at <= now:
                continue  # lapsed, not pruned yet
            data = json.loads(record)
            entries.append(Revocation(data["kind"], int(expires_at), issuer=data.get("iss"), jti=data.get("jti"),
                                      subject=data.get("sub"), cutoff=data.get("cutoff")))
        return entries, members[-1] if more else None

    async def prune(self) -> int:
        """Forget lapsed entries (their keys are gone already); returns how many."""
        keys = [self._keys.expiries, self._keys.index, self._keys.entries]
        return int(await self._prune(keys=keys, args=[self._now(), PRUNE_BATCH]))

    async def count(self) -> int:
        """Live entries of every kind (the ``registry_consumer_revoked_tokens`` gauge)."""
        return int(await self._redis.zcount(self._keys.expiries, f"({self._now()}", "+inf"))


def _identity(channel: _Channel) -> _Channel:
    return channel


class _Channel(asyncio.Protocol):
    """The revocation channel's connection: every message (or anything unexpected) drops the cached answers."""

    def __init__(self, store: RevocationStore) -> None:
        self._store = store
        self._reader = hiredis.Reader()
        self._replies: list[Any] = []
        self._replied = asyncio.Event()
        self.closed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if self._store._subscribed:
                self._store._invalidate()
            else:
                self._replies.append(reply)
                self._replied.set()

    async def wait_subscribed(self, replies: int) -> None:
        """Wait for the answers to the AUTH and SUBSCRIBE commands; raise if any is an error."""
        while len(self._replies) < replies:
            self._replied.clear()
            await self._replied.wait()
        for reply in self._replies:
            if isinstance(reply, Exception):
                raise redis.exceptions.ConnectionError(f"revocation channel: {reply}")

    def eof_received(self) -> bool:
        self._lost()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def _lost(self) -> None:
        self._store._channel_lost()
        if not self.closed.done():
            self.closed.set_result(True)
