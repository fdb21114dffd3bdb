"""The revocation list in Redis: per token, per subject, global; monotonic cutoffs; one round trip per check;
refused on every replica by the next request; fail closed without Redis; the ``token revoke/inspect`` CLI.

Decision tested here: a subject or global cutoff T revokes tokens with ``iat <= T`` (issued at or before
T), so a token issued in the very second of the revocation is revoked as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from consumer.app import create_app
from consumer.errors import BadRequest
from consumer.metrics import Metrics
from consumer.rediskeys import RedisKeys
from consumer.revocation import ALL, CHECK_CACHE_SECONDS, SUBJECT, TOKEN, RevocationStore
from consumer.settings import Settings
from consumer.tokens import Claims, mint
from tests.conftest import ALL_SCOPES, JWT_SECRET
from tests.support.redis_server import RedisServer

KEYS = RedisKeys("rc").revocations
LEEWAY, CUTOFF_TTL = 30, 3600


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(redis_client: Redis, clock: Clock) -> RevocationStore:
    return RevocationStore(redis_client, KEYS, leeway_seconds=LEEWAY, cutoff_ttl_seconds=CUTOFF_TTL, clock=clock)


def token_claims(*, iat: int, sub: str = "alice", jti: str = "j-1", iss: str = "registry-consumer") -> Claims:
    return Claims(sub=sub, iat=iat, exp=iat + 600, jti=jti, iss=iss)


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes (CLUSTER KEYSLOT rules)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start != -1 and end > start + 1 else key


# --- the store ---------------------------------------------------------------------------------------


async def test_token_entry_lapses_at_exp_plus_leeway(store: RevocationStore, redis_client: Redis,
                                                     clock: Clock) -> None:
    exp = int(clock.now) + 600
    outcome = await store.revoke_token(issuer="registry-consumer", jti="j-1", exp=exp, subject="alice")
    assert outcome.changed and outcome.entry is not None and outcome.entry.expires_at == exp + LEEWAY
    assert await redis_client.expiretime(KEYS.token("registry-consumer", "j-1")) == exp + LEEWAY
    assert await store.revoked_by(token_claims(iat=exp - 600)) == TOKEN
    assert await store.revoked_by(token_claims(iat=exp - 600, jti="j-2")) is None
    assert await store.revoked_by(token_claims(iat=exp - 600, iss="https://other-issuer")) is None


async def test_already_expired_token_is_not_stored(store: RevocationStore, redis_client: Redis,
                                                   clock: Clock) -> None:
    outcome = await store.revoke_token(issuer="i", jti="j", exp=int(clock.now) - LEEWAY)
    assert outcome.entry is None and not outcome.changed
    assert await redis_client.dbsize() == 0
    # Still inside the leeway: the verifier would accept it, so it is stored.
    outcome = await store.revoke_token(issuer="i", jti="j", exp=int(clock.now) - LEEWAY + 1)
    assert outcome.changed


async def test_revoking_twice_changes_nothing_the_second_time(store: RevocationStore, clock: Clock) -> None:
    exp = int(clock.now) + 60
    assert (await store.revoke_token(issuer="i", jti="j", exp=exp)).changed
    assert not (await store.revoke_token(issuer="i", jti="j", exp=exp)).changed
    assert await store.count() == 1


async def test_subject_cutoff_revokes_iat_equal_to_t(store: RevocationStore, clock: Clock) -> None:
    t = int(clock.now) - 10
    outcome = await store.revoke_subject("alice", t)
    assert outcome.changed and outcome.entry is not None and outcome.entry.cutoff == t
    assert await store.revoked_by(token_claims(iat=t - 1)) == SUBJECT
    assert await store.revoked_by(token_claims(iat=t)) == SUBJECT  # iat == T: revoked
    assert await store.revoked_by(token_claims(iat=t + 1)) is None
    assert await store.revoked_by(token_claims(iat=t - 1, sub="bob")) is None


async def test_subject_cutoff_only_moves_forward(store: RevocationStore, redis_client: Redis,
                                                 clock: Clock) -> None:
    later, earlier = int(clock.now) - 10, int(clock.now) - 1000
    await store.revoke_subject("alice", later)
    outcome = await store.revoke_subject("alice", earlier)
    assert not outcome.changed and outcome.entry is not None and outcome.entry.cutoff == later
    assert int(await redis_client.get(KEYS.subject("alice"))) == later
    assert await redis_client.expiretime(KEYS.subject("alice")) == later + CUTOFF_TTL
    assert await store.revoked_by(token_claims(iat=later - 5)) == SUBJECT


async def test_concurrent_cutoffs_end_at_the_latest(store: RevocationStore, redis_client: Redis,
                                                    clock: Clock) -> None:
    base = int(clock.now) - 500
    cutoffs = [base + (n * 37) % 400 for n in range(60)]
    await asyncio.gather(*(store.revoke_subject("alice", t) for t in cutoffs))
    assert int(await redis_client.get(KEYS.subject("alice"))) == max(cutoffs)


async def test_global_cutoff(store: RevocationStore, redis_client: Redis, clock: Clock) -> None:
    t = int(clock.now)
    outcome = await store.revoke_all()
    assert outcome.entry is not None and outcome.entry.cutoff == t
    assert await redis_client.expiretime(KEYS.all) == t + CUTOFF_TTL
    assert await store.revoked_by(token_claims(iat=t, sub="anyone", iss="any-issuer")) == ALL
    assert await store.revoked_by(token_claims(iat=t + 1, sub="anyone")) is None
    assert not (await store.revoke_all(t - 100)).changed


async def test_a_cutoff_in_the_future_is_refused(store: RevocationStore, clock: Clock) -> None:
    with pytest.raises(BadRequest):
        await store.revoke_subject("alice", int(clock.now) + 60)
    with pytest.raises(BadRequest):
        await store.revoke_all(0)


async def test_the_check_is_one_mget(store: RevocationStore, redis_client: Redis, clock: Clock) -> None:
    await store.revoke_subject("alice", int(clock.now) - 5)
    await redis_client.config_resetstat()
    await store.revoked_by(token_claims(iat=int(clock.now)))
    stats = await redis_client.info("commandstats")
    used = {name: v["calls"] for name, v in stats.items() if name not in ("cmdstat_info", "cmdstat_config|resetstat")}
    assert used == {"cmdstat_mget": 1}


async def test_concurrent_checks_each_get_their_own_answer(store: RevocationStore, redis_client: Redis,
                                                           clock: Clock) -> None:
    now = int(clock.now)
    for n in range(0, 40, 2):
        await store.revoke_token(issuer="registry-consumer", jti=f"j-{n}", exp=now + 600)
    await redis_client.config_resetstat()
    answers = await asyncio.gather(*(store.revoked_by(token_claims(iat=now, jti=f"j-{n}")) for n in range(40)))
    assert answers == [TOKEN if n % 2 == 0 else None for n in range(40)]
    stats = await redis_client.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 40


async def test_every_revocation_key_is_in_one_hash_slot(store: RevocationStore, redis_client: Redis,
                                                        clock: Clock) -> None:
    await store.revoke_token(issuer="https://auth.example/token", jti="j:with:colons", exp=int(clock.now) + 60)
    await store.revoke_subject("user/with{braces}")
    await store.revoke_all()
    keys = [k.decode() for k in await redis_client.keys("*")]
    assert len(keys) == 6
    assert {hash_tag(k) for k in keys} == {"_revocations"}


async def test_list_pages_prunes_and_counts(store: RevocationStore, clock: Clock) -> None:
    now = int(clock.now)
    for n in range(5):
        await store.revoke_token(issuer="iss", jti=f"j-{n}", exp=now + 100 * (n + 1), subject=f"s{n}")
    await store.revoke_subject("alice", now - 1)
    await store.revoke_all(now - 1)
    seen, cursor = [], None
    while True:
        page, cursor = await store.page(3, cursor)
        seen += page
        if cursor is None:
            break
    assert len(seen) == 7
    assert {e.kind for e in seen} == {TOKEN, SUBJECT, ALL}
    by_jti = {e.jti: e for e in seen if e.kind == TOKEN}
    assert by_jti["j-0"].expires_at == now + 100 + LEEWAY and by_jti["j-0"].subject == "s0"
    assert await store.count() == 7

    clock.now = now + 250 + LEEWAY  # j-0 and j-1 have lapsed
    assert await store.count() == 5
    assert {e.jti for e in (await store.page(100))[0] if e.kind == TOKEN} == {"j-2", "j-3", "j-4"}
    assert await store.prune() == 2
    assert await store.prune() == 0


# --- through the HTTP API: the revocation part of the attack set -----------------------------------


def auth_failures(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("registry_consumer_auth_failures_total", {"reason": reason}) or 0.0


async def read_index(client: TestClient[Any, Any], token: str) -> int:
    resp = await client.get("/v1/repositories", headers={"Authorization": f"Bearer {token}"})
    return resp.status


async def test_revoked_jti_is_refused(client: TestClient[Any, Any], make_token: Callable[..., str],
                                      metrics: Metrics) -> None:
    token, admin = make_token(), make_token(sub="admin")
    assert await read_index(client, token) == 200
    resp = await client.post("/v1/tokens/revoke", data={"token": token},
                             headers={"Authorization": f"Bearer {admin}"})
    assert resp.status == 200
    resp = await client.get("/v1/repositories", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401 and (await resp.json())["error"] == "invalid_token"
    assert auth_failures(metrics, "revoked") == 1
    assert await read_index(client, admin) == 200


async def test_subject_cutoff_is_refused(client: TestClient[Any, Any], settings: Settings,
                                         make_token: Callable[..., str], metrics: Metrics) -> None:
    now = int(time.time())
    old = mint(settings.auth, JWT_SECRET.encode(), sub="alice", scope=ALL_SCOPES, ttl_seconds=600, now=now)
    same_second = mint(settings.auth, JWT_SECRET.encode(), sub="alice", scope=ALL_SCOPES, ttl_seconds=600, now=now)
    next_second = mint(settings.auth, JWT_SECRET.encode(), sub="alice", scope=ALL_SCOPES, ttl_seconds=600,
                       now=now + 1)
    admin = make_token(sub="admin")
    resp = await client.post("/v1/tokens/revoke", json={"sub": "alice", "cutoff": now},
                             headers={"Authorization": f"Bearer {admin}"})
    assert resp.status == 200 and (await resp.json())["revoked"] is True
    assert await read_index(client, old) == 401
    assert await read_index(client, same_second) == 401  # iat == T is revoked
    assert await read_index(client, next_second) == 200
    assert auth_failures(metrics, "revoked") == 2


async def test_global_cutoff_is_refused(client: TestClient[Any, Any], make_token: Callable[..., str],
                                        metrics: Metrics) -> None:
    tokens = [make_token(sub=f"user-{n}") for n in range(3)]
    admin = make_token(sub="admin")
    resp = await client.post("/v1/tokens/revoke", json={"all": True}, headers={"Authorization": f"Bearer {admin}"})
    assert resp.status == 200
    for token in [*tokens, admin]:
        assert await read_index(client, token) == 401
    assert auth_failures(metrics, "revoked") == 4


async def test_revocation_reaches_every_replica_by_the_next_request(
    aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings], make_token: Callable[..., str]
) -> None:
    replica_a = await aiohttp_client(create_app(make_settings(), metrics=Metrics(process=False)))
    replica_b = await aiohttp_client(create_app(make_settings(), metrics=Metrics(process=False)))
    token, admin = make_token(sub="registry"), make_token(sub="admin")
    for _ in range(3):  # replica B has verified and cached the token's signature
        assert await read_index(replica_b, token) == 200
    resp = await replica_a.post("/v1/tokens/revoke", data={"token": token},
                                headers={"Authorization": f"Bearer {admin}"})
    assert resp.status == 200
    assert await read_index(replica_b, token) == 401


async def test_redis_down_fails_closed(aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings],
                                       make_token: Callable[..., str], tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "own-redis")
    server.start()
    try:
        metrics = Metrics(process=False)
        client = await aiohttp_client(create_app(make_settings(redis_url=server.url), metrics=metrics))
        token = make_token()
        assert await read_index(client, token) == 200  # the signature check is now cached
        server.stop()
        resp = await client.get("/v1/repositories", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 503 and (await resp.json())["error"] == "store_unavailable"
        resp = await client.post("/v1/tokens/introspect", data={"token": token},
                                 headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 503
        assert (metrics.registry.get_sample_value("registry_consumer_redis_errors_total") or 0) >= 2
    finally:
        server.stop()


# --- the CLI -----------------------------------------------------------------------------------------


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_CONSUMER_")}
    env.update(REGISTRY_CONSUMER_JWT_SECRET=JWT_SECRET, REGISTRY_CONSUMER_REDIS_URL=redis_url)
    return subprocess.run([sys.executable, "-m", "consumer", "token", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_cli_revoke_and_inspect_a_token(redis_url: str, make_token: Callable[..., str]) -> None:
    token = make_token(sub="ci-bot")
    inspected = cli(redis_url, "inspect", token)
    assert inspected.returncode == 0, inspected.stderr
    report = json.loads(inspected.stdout)
    assert report["active"] and report["verified_by"] == "consumer" and report["revoked"] is False
    assert report["claims"]["sub"] == "ci-bot" and report["header"]["alg"] == "HS256"

    revoked = cli(redis_url, "revoke", "--token", token)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked"] is True

    inspected = cli(redis_url, "inspect", token)
    report = json.loads(inspected.stdout)
    assert inspected.returncode == 1
    assert report["valid"] and report["revoked"] and report["revoked_by"] == "token"
    assert report["reason"] == "revoked" and not report["active"]


def test_cli_revoke_by_subject_jti_and_all(redis_url: str, make_token: Callable[..., str]) -> None:
    token = make_token(sub="ci-bot")
    result = cli(redis_url, "revoke", "--sub", "ci-bot")
    assert result.returncode == 0 and json.loads(result.stdout)["entry"]["kind"] == "subject"
    assert json.loads(cli(redis_url, "inspect", token).stdout)["revoked_by"] == "subject"

    result = cli(redis_url, "revoke", "--jti", "abc", "--exp", str(int(time.time()) + 60))
    entry = json.loads(result.stdout)["entry"]
    assert entry["kind"] == "token" and entry["iss"] == "registry-consumer" and entry["jti"] == "abc"
    result = cli(redis_url, "revoke", "--jti", "old", "--exp", "1000")
    assert result.returncode == 0 and json.loads(result.stdout) == {"revoked": False, "entry": None}

    assert json.loads(cli(redis_url, "revoke", "--all").stdout)["entry"]["kind"] == "all"


def test_cli_inspect_says_why_a_token_is_invalid(redis_url: str) -> None:
    result = cli(redis_url, "inspect", "not-a-token")
    assert result.returncode == 1 and json.loads(result.stdout)["reason"] == "malformed"
    result = cli(redis_url, "revoke", "--token", "not-a-token")
    assert result.returncode == 1 and "nothing to revoke" in result.stderr
    result = cli(redis_url, "revoke", "--jti", "x")
    assert result.returncode == 2 and "--exp" in result.stderr


# --- the cached check: pub/sub invalidation, the 1 s bound, no cache without a subscription -------------


async def mget_calls(redis_client: Redis) -> int:
    stats = await redis_client.info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


async def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 (polls the store's private state)
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def listening_store(store: RevocationStore, retry_seconds: float = 0.05) -> AsyncIterator[RevocationStore]:
    subscribed, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(store.listen(subscribed, stop, retry_seconds=retry_seconds))
    await asyncio.wait_for(subscribed.wait(), 10)
    try:
        yield store
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def listening(store: RevocationStore) -> AsyncIterator[RevocationStore]:
    async with listening_store(store) as listening:
        yield listening


async def test_a_listening_store_answers_a_repeated_check_from_memory(listening: RevocationStore,
                                                                      redis_client: Redis, clock: Clock) -> None:
    claims = token_claims(iat=int(clock.now))
    await redis_client.config_resetstat()
    assert await listening.revoked_by(claims) is None
    assert await listening.revoked_by(claims) is None
    assert await listening.revoked_by(token_claims(iat=int(clock.now), jti="j-2")) is None  # another token: asked
    assert await mget_calls(redis_client) == 2


async def test_a_revocation_on_a_replica_drops_the_cached_answer(listening: RevocationStore, redis_client: Redis,
                                                                 clock: Clock) -> None:
    replica = RevocationStore(redis_client, KEYS, leeway_seconds=LEEWAY, cutoff_ttl_seconds=CUTOFF_TTL, clock=clock)
    claims = token_claims(iat=int(clock.now) - 1)
    assert await listening.revoked_by(claims) is None  # cached now
    generation = listening._generation
    await replica.revoke_subject("alice")
    await asyncio.wait_for(wait_until(lambda: listening._generation != generation), 5)
    assert await listening.revoked_by(claims) == SUBJECT


async def test_without_the_message_a_revocation_holds_after_the_cache_bound(listening: RevocationStore,
                                                                            redis_client: Redis, clock: Clock) -> None:
    claims = token_claims(iat=int(clock.now) - 1)
    assert await listening.revoked_by(claims) is None
    # Written behind the store's back (no message): only the bound makes it visible.
    await redis_client.set(KEYS.subject("alice"), int(clock.now))
    assert await listening.revoked_by(claims) is None  # still the cached answer
    await asyncio.sleep(CHECK_CACHE_SECONDS + 0.1)
    assert await listening.revoked_by(claims) == SUBJECT


async def test_a_lost_subscription_turns_the_cache_off(store: RevocationStore, redis_client: Redis,
                                                       clock: Clock) -> None:
    async with listening_store(store, retry_seconds=60) as listening:  # no resubscription during this test
        claims = token_claims(iat=int(clock.now) - 1)
        assert await listening.revoked_by(claims) is None
        await redis_client.client_kill_filter(_type="pubsub")
        await asyncio.wait_for(wait_until(lambda: not listening._subscribed), 5)
        await redis_client.config_resetstat()
        assert await listening.revoked_by(claims) is None
        assert await listening.revoked_by(claims) is None
        assert await mget_calls(redis_client) == 2  # every check asks Redis (and fails closed without it)
        # Revoked while nobody listens: the next check sees it, with no message to tell it.
        await redis_client.set(KEYS.subject("alice"), int(clock.now))
        assert await listening.revoked_by(claims) == SUBJECT


async def test_the_cache_comes_back_after_resubscribing(listening: RevocationStore, redis_client: Redis,
                                                        clock: Clock) -> None:
    claims = token_claims(iat=int(clock.now) - 1)
    assert await listening.revoked_by(claims) is None
    generation = listening._generation
    await redis_client.client_kill_filter(_type="pubsub")
    await asyncio.wait_for(wait_until(lambda: listening._generation != generation), 5)
    await asyncio.wait_for(wait_until(lambda: listening._subscribed), 10)
    other = token_claims(iat=int(clock.now) - 1, sub="bob")
    assert await listening.revoked_by(other) is None
    await redis_client.config_resetstat()
    assert await listening.revoked_by(other) is None
    assert await mget_calls(redis_client) == 0


async def test_an_answer_read_before_an_invalidation_is_not_cached(listening: RevocationStore, redis_client: Redis,
                                                                   clock: Clock) -> None:
    claims = token_claims(iat=int(clock.now) - 1)
    check = asyncio.create_task(listening.revoked_by(claims))  # MGET queued, not answered yet
    await asyncio.sleep(0)
    listening._invalidate()  # a revocation message arriving while the MGET is in flight
    assert await check is None
    await redis_client.config_resetstat()
    assert await listening.revoked_by(claims) is None
    assert await mget_calls(redis_client) == 1
