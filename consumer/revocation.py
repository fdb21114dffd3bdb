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

A request is checked with one ``MGET`` of the three keys that can apply to its token, every time (the
checks of concurrent requests share a round trip): no answer is cached, so a revocation made through any
replica holds on every replica from the next request. Redis errors propagate, and the error middleware
answers 503: checks fail closed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from consumer.errors import BadRequest
from consumer.index import SharedPipeline
from consumer.rediskeys import RevocationKeys
from consumer.settings import Settings
from consumer.tokens import Claims

TOKEN, SUBJECT, ALL = "token", "subject", "all"
PRUNE_BATCH = 1000


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
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._leeway = leeway_seconds
        self._cutoff_ttl = cutoff_ttl_seconds
        self._clock = clock
        self._raise_cutoff = _script(redis, "raise_cutoff")
        self._prune = _script(redis, "prune_revocations")
        # Checks of concurrent requests share one round trip (each is still its own MGET, sent after the
        # request arrived: nothing is answered from a cache).
        self._pipeline = SharedPipeline(redis)

    @classmethod
    def for_settings(cls, redis: Redis, keys: RevocationKeys, settings: Settings) -> RevocationStore:
        leeway, cutoff_ttl = revocation_windows(settings)
        return cls(redis, keys, leeway_seconds=leeway, cutoff_ttl_seconds=cutoff_ttl)

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
        revocation = Revocation(kind, int(in_force) + self._cutoff_ttl, subject=subject, cutoff=int(in_force))
        return RevokeOutcome(revocation, changed=bool(raised))

    async def revoked_by(self, claims: Claims) -> str | None:
        """The kind of revocation that catches this verified token, or None. One round trip."""
        keys = self._keys
        (replies,) = await self._pipeline.send([("MGET", keys.token(claims.iss, claims.jti), keys.subject(claims.sub),
                                                  keys.all)])
        token, subject_cutoff, all_cutoff = replies
        if token is not None:
            return TOKEN
        if subject_cutoff is not None and claims.iat <= int(subject_cutoff):
            return SUBJECT
        if all_cutoff is not None and claims.iat <= int(all_cutoff):
            return ALL
        return None

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
