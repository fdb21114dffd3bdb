"""The durable deletion queue and the worker that empties it, carefully and slowly.

The planner (``consumer.retention``) only ever enqueues; nothing is deleted on the event path. The queue
is one Redis stream read through a consumer group, so a deletion survives restarts and is handed to one
worker at a time:

- A per-repository claim (``RepoKeys.retention_claims``, with an expiry) keeps a deletion from being
  queued twice while it waits; the worker releases it when the entry is finished.
- The worker reads new entries with ``XREADGROUP``. Before each DELETE it asks the planner to confirm the
  deletion against the index as it is now (a queued plan may be stale), checks the registry still has
  the tag on the same digest (``HEAD``), waits for the global rate limit, and writes the deletion intents
  so the registry's delete events are expected, not reported as unexpected.
- An entry is acknowledged and removed (``XACK`` + ``XDEL``) when it is done, dropped, or out of
  attempts. A failed attempt stays pending: the worker sets its idle clock back (``XCLAIM ... IDLE``) so
  that ``XAUTOCLAIM``, which hands out entries idle longer than ``claim_idle_seconds``, returns it after an
  exponential backoff (``retry_base_seconds`` doubling per attempt, capped at ``claim_idle_seconds``). The
  same ``XAUTOCLAIM`` takes over the entries of a worker that died mid-delete.

Because finished entries are deleted, the stream's length is the queue depth, and its first entry id is
the enqueue time of the oldest pending deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import redis.exceptions
from redis.asyncio import Redis

from consumer.background import REDIS_DOWN, Loops
from consumer.errors import RegistryError
from consumer.index import text
from consumer.intents import DeletionIntents
from consumer.metrics import Metrics
from consumer.rediskeys import RedisKeys
from consumer.registry_client import RegistryClient
from consumer.settings import RetentionSettings

if TYPE_CHECKING:
    from consumer.audit import AuditLog
    from consumer.retention import RetentionPlanner

log = logging.getLogger(__name__)

GROUP = "deleters"
_READ_BLOCK_MS = 1000
# One entry per read: an entry read in a batch waits, idle to XAUTOCLAIM, while the ones before it run, and on a
# slow registry another replica could claim it and run it too.
_BATCH = 1


class Action(enum.Enum):
    """How a deletion is carried out on the registry."""

    TAG = "tag"  # DELETE /v2/<name>/manifests/<tag> (registry 3.x): only the tag goes
    DIGEST = "digest"  # DELETE /v2/<name>/manifests/<digest>: the manifest and every tag on it go


@dataclass(frozen=True, slots=True)
class Deletion:
    """One planned deletion: a tag, or a manifest with the tags that go with it."""

    repository: str
    action: Action
    digest: str
    tag: str | None = None
    tags: tuple[str, ...] = ()
    rule: str = ""
    reason: str = ""

    @property
    def claim(self) -> str:
        """The member that marks this deletion as queued in the repository's claims (and dry-run plan)."""
        return f"t:{self.tag}" if self.action is Action.TAG else f"m:{self.digest}"

    def fields(self) -> dict[str, str]:
        """The stream entry."""
        return {
            "repository": self.repository,
            "action": self.action.value,
            "digest": self.digest,
            "tag": self.tag or "",
            "tags": " ".join(self.tags),
            "rule": self.rule,
            "reason": self.reason,
        }

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> Deletion:
        """Parse a stream entry written by :meth:`fields`."""
        values = {text(k): text(v) for k, v in raw.items()}
        return cls(
            repository=values["repository"],
            action=Action(values["action"]),
            digest=values["digest"],
            tag=values.get("tag") or None,
            tags=tuple(values.get("tags", "").split()),
            rule=values.get("rule", ""),
            reason=values.get("reason", ""),
        )


def stream_id_ms(entry_id: str) -> int:
    """The milliseconds part of a stream entry id (when it was added)."""
    return int(entry_id.split("-", 1)[0])


class DeletionQueue:
    """The stream of planned deletions, with per-repository claims against double queuing."""

    def __init__(self, redis: Redis, keys: RedisKeys, *, claim_ttl_seconds: int) -> None:
        self._redis = redis
        self._keys = keys
        self._claim_ttl = claim_ttl_seconds

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group if they do not exist yet."""
        with contextlib.suppress(redis.exceptions.ResponseError):  # BUSYGROUP: it exists
            await self._redis.xgroup_create(self._keys.retention_queue, GROUP, id="0", mkstream=True)

    async def enqueue(self, repository: str, deletions: Sequence[Deletion], limit: int) -> list[Deletion]:
        """Queue up to ``limit`` of ``deletions`` not already queued (in order); returns the ones queued."""
        if not deletions or limit <= 0:
            return []
        claims_key = self._keys.repo(repository).retention_claims
        now = time.time()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(claims_key, "-inf", now)  # claims of deletions that never finished
            pipe.zmscore(claims_key, [d.claim for d in deletions])
            _, scores = await pipe.execute()
        queued: list[Deletion] = []
        for deletion, score in zip(deletions, scores, strict=True):
            if len(queued) >= limit:
                break
            # NX: of two evaluations racing for the same deletion, one claims it.
            if score is None and await self._redis.zadd(claims_key, {deletion.claim: now + self._claim_ttl}, nx=True):
                # The claim comes first: a crash between the two leaves a claim that expires, never a
                # deletion queued twice.
                await self._redis.xadd(self._keys.retention_queue, deletion.fields())  # type: ignore[arg-type]
                queued.append(deletion)
        return queued

    async def release(self, deletion: Deletion) -> None:
        """Forget the claim of a finished deletion, so it can be planned again if it comes back."""
        await self._redis.zrem(self._keys.repo(deletion.repository).retention_claims, deletion.claim)

    async def depth(self) -> int:
        """Deletions queued and not finished."""
        return int(await self._redis.xlen(self._keys.retention_queue))

    async def oldest_age_seconds(self, now: float | None = None) -> float:
        """How long the oldest unfinished deletion has waited (0 when the queue is empty)."""
        first: list[tuple[bytes, Any]] = await self._redis.xrange(  # type: ignore[assignment]
            self._keys.retention_queue, count=1
        )
        if not first:
            return 0.0
        added = stream_id_ms(text(first[0][0])) / 1000
        return max(0.0, (time.time() if now is None else now) - added)


@dataclass(slots=True)
class _Entry:
    id: str
    deletion: Deletion
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one queue entry (for logs and tests)."""

    deletion: Deletion
    status: str  # deleted, gone (already deleted), dropped (no longer planned), retry, failed
    detail: str = ""
    executed: Deletion | None = None


class RateLimiter:
    """A global rate limit shared by every process (GCRA in Redis: one atomic script per permit)."""

    def __init__(self, redis: Redis, key: str, per_second: float) -> None:
        self._key = key
        self._interval_ms = max(1, round(1000 / per_second))
        lua = (resources.files("consumer") / "lua" / "retention_rate.lua").read_text()
        self._script = redis.register_script(lua)

    async def acquire(self) -> None:
        """Wait until a permit is free, then take it."""
        while True:
            wait_ms = int(await self._script(keys=[self._key], args=[self._interval_ms]))
            if wait_ms <= 0:
                return
            await asyncio.sleep(wait_ms / 1000)


class DeletionWorker:
    """Consumes the queue: confirm, rate-limit, write intents, DELETE, audit, acknowledge."""

    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        queue: DeletionQueue,
        planner: RetentionPlanner,
        registry: RegistryClient,
        intents: DeletionIntents,
        audit: AuditLog,
        metrics: Metrics,
        settings: RetentionSettings,
        *,
        consumer_name: str | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._queue = queue
        self._planner = planner
        self._registry = registry
        self._intents = intents
        self._audit = audit
        self._metrics = metrics
        self._settings = settings
        self._limiter = RateLimiter(redis, keys.retention_rate, settings.max_deletions_per_second)
        self.name = consumer_name or f"{socket.gethostname()}-{os.getpid()}"
        self._autoclaim_cursor = "0-0"

    # -- the loop --------------------------------------------------------------------------------

    async def run(self, loops: Loops) -> None:
        """Work until ``loops`` stops; Redis outages are waited out."""
        group_ready = False
        while not loops.stop.is_set():
            try:
                if not group_ready:
                    await self._queue.ensure_group()
                    group_ready = True
                await self.step(block_ms=_READ_BLOCK_MS)
                continue
            except REDIS_DOWN:
                self._metrics.redis_errors.inc()
            except Exception:
                log.exception("retention deletion worker step failed")
            await loops.pause(1.0)

    async def step(self, block_ms: int | None = None) -> list[Outcome]:
        """Handle what is due: entries whose retry backoff passed (or whose worker died), then new ones."""
        entries = await self._reclaim()
        entries += await self._read_new(block_ms if not entries else None)
        return [await self._handle(entry) for entry in entries]

    async def drain(self, timeout_seconds: float = 30.0) -> list[Outcome]:
        """Handle entries until the queue is empty or nothing is due (for tests and the CLI)."""
        outcomes: list[Outcome] = []
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            step = await self.step()
            outcomes += step
            if not step:
                return outcomes
        return outcomes

    async def _read_new(self, block_ms: int | None) -> list[_Entry]:
        reply: list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] = await self._redis.xreadgroup(  # type: ignore[assignment]
            GROUP, self.name, {self._keys.retention_queue: ">"}, count=_BATCH, block=block_ms
        )
        entries: list[_Entry] = []
        for _stream, rows in reply or []:
            entries += [_Entry(text(entry_id), Deletion.from_fields(fields)) for entry_id, fields in rows]
        return entries

    async def _reclaim(self) -> list[_Entry]:
        idle_ms = int(self._settings.claim_idle_seconds * 1000)
        reply = await self._redis.xautoclaim(
            self._keys.retention_queue, GROUP, self.name, idle_ms, start_id=self._autoclaim_cursor, count=_BATCH
        )
        self._autoclaim_cursor = text(reply[0])
        rows = [(text(entry_id), fields) for entry_id, fields in reply[1] if fields]
        if not rows:
            return []
        # XAUTOCLAIM counted this delivery; the count is how many attempts have started.
        pending = await self._redis.xpending_range(
            self._keys.retention_queue, GROUP, min=rows[0][0], max=rows[-1][0], count=len(rows) * 4,
            consumername=self.name,
        )
        attempts = {text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return [_Entry(entry_id, Deletion.from_fields(fields), attempts.get(entry_id, 1)) for entry_id, fields in rows]

    # -- one entry -------------------------------------------------------------------------------

    async def _handle(self, entry: _Entry) -> Outcome:
        try:
            outcome = await self.execute(entry.deletion)
        except (RegistryError, OSError, TimeoutError) as exc:
            outcome = Outcome(entry.deletion, "retry", f"{type(exc).__name__}: {exc}")
        if outcome.status != "retry":
            await self._finish(entry)
            return outcome
        if entry.attempts >= self._settings.max_attempts:
            self._metrics.retention_deletions.labels("failed").inc()
            log.error("retention deletion failed for good",
                      extra={**_log_fields(entry.deletion), "attempts": entry.attempts, "error": outcome.detail})
            await self._finish(entry)
            return Outcome(entry.deletion, "failed", outcome.detail)
        await self._back_off(entry)
        log.warning("retention deletion will be retried",
                    extra={**_log_fields(entry.deletion), "attempts": entry.attempts, "error": outcome.detail})
        return outcome

    async def _finish(self, entry: _Entry) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._keys.retention_queue, GROUP, entry.id)
            pipe.xdel(self._keys.retention_queue, entry.id)
            await pipe.execute()
        await self._queue.release(entry.deletion)

    async def _back_off(self, entry: _Entry) -> None:
        """Leave the entry pending, looking idle for just long enough that XAUTOCLAIM returns it after the backoff."""
        limit = self._settings.claim_idle_seconds
        backoff = min(limit, self._settings.retry_base_seconds * 2 ** (entry.attempts - 1))
        await self._redis.xclaim(
            self._keys.retention_queue, GROUP, self.name, 0, [entry.id],
            idle=int((limit - backoff) * 1000), justid=True,
        )

    async def execute(self, deletion: Deletion) -> Outcome:
        """Confirm one deletion and carry it out; raises on errors worth a retry."""
        if await self._planner.confirm(deletion) is None:
            return Outcome(deletion, "dropped", "no longer planned")  # no permit spent on it
        # The permit bounds the load on the registry, so the registry's checks come after it, and all the
        # checks as close to the DELETE as they can be (a tag re-pushed or moved while waiting for the rate
        # limit would otherwise go with it).
        await self._limiter.acquire()
        current = await self._planner.confirm(deletion)
        if current is None:
            return Outcome(deletion, "dropped", "no longer planned")
        if not await self._still_on_registry(current):
            return Outcome(deletion, "dropped", "the registry no longer has it as planned")
        if current.action is Action.DIGEST and not current.tags:
            subject = await self._live_subject(current)
            if subject is not None:
                return Outcome(deletion, "dropped", f"refers to live manifest {subject}")
        # A registry that turns out unable to delete tags raises TagDeleteUnsupported (a RegistryError): the
        # retry is confirmed again, now planned by digest since the client has learned what the registry can do.
        return await self._delete(deletion, current)

    async def _delete(self, deletion: Deletion, current: Deletion) -> Outcome:
        """Write the intents, send the DELETE, and withdraw the intents if nothing was deleted."""
        repository = current.repository
        if current.action is Action.TAG:
            assert current.tag is not None
            await self._intents.expect(repository, tag=current.tag)
        else:
            await self._intents.expect(repository, digest=current.digest, tags=current.tags)
        # The intents stay until they expire when the DELETE fails: one whose answer was lost may have deleted,
        # and its event must not be reported as a deletion nobody planned (nor, with revoke_actor, get the
        # consumer's own tokens revoked). The client counts a 404 after a retry as deleted for that reason.
        if current.action is Action.TAG:
            assert current.tag is not None
            deleted = await self._registry.delete_tag(repository, current.tag)
        else:
            deleted = await self._registry.delete_manifest(repository, current.digest)
        if not deleted:
            # Gone at the first attempt: somebody else deleted it, and their delete event is theirs to explain.
            await self._forget(current)
            return Outcome(deletion, "gone", "already deleted", current)
        self._metrics.retention_deletions.labels("enforced").inc()
        await self._audit.record(
            "retention_delete", repository, tag=current.tag, digest=current.digest,
            detail=f"{current.rule}: {current.reason}",
        )
        log.info("retention deleted", extra=_log_fields(current))
        return Outcome(deletion, "deleted", executed=current)

    async def _forget(self, deletion: Deletion) -> None:
        if deletion.action is Action.TAG:
            await self._intents.forget(deletion.repository, tag=deletion.tag)
        else:
            await self._intents.forget(deletion.repository, digest=deletion.digest, tags=deletion.tags)

    async def _live_subject(self, deletion: Deletion) -> str | None:
        """For an untagged manifest: the live manifest its ``subject`` names (a signature, an SBOM), if any."""
        manifest = await self._registry.get_manifest(deletion.repository, deletion.digest)
        subject = ""
        if manifest is not None:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                subject = str(json.loads(manifest.body).get("subject", {}).get("digest") or "")
        live = await self._planner.note_subject(deletion.repository, deletion.digest, subject)
        return subject if live else None

    async def _still_on_registry(self, deletion: Deletion) -> bool:
        """The index may lag the registry: each tag that goes must still name the planned digest there
        (an untagged manifest must still exist), and a digest DELETE, which takes every tag on the digest
        with it, must not find any other tag naming the digest (a retag or a rollback whose push is still in
        the registry's queue)."""
        repository = deletion.repository
        references = [deletion.tag] if deletion.action is Action.TAG and deletion.tag else list(deletion.tags)
        for reference in references or [deletion.digest]:
            if await self._registry.head_digest(repository, reference) != deletion.digest:
                return False
        if deletion.action is Action.DIGEST:
            # Every other tag, not only those the index has not heard of: a known tag may have been moved onto
            # this digest too (a rollback by retag) with its event still queued. O(tags) HEADs, bounded by the
            # client's concurrency, before a DELETE that cannot be undone.
            planned = set(deletion.tags)
            others = [t for t in await self._registry.tags(repository) or [] if t not in planned]
            digests = await asyncio.gather(*(self._registry.head_digest(repository, t) for t in others))
            if deletion.digest in digests:
                return False
        return True


def _log_fields(deletion: Deletion) -> dict[str, str]:
    return {
        "repository": deletion.repository,
        "action": deletion.action.value,
        "tag": deletion.tag or "",
        "digest": deletion.digest,
        "rule": deletion.rule,
    }


async def refresh_queue_gauges(queue: DeletionQueue, metrics: Metrics) -> None:
    """Queue depth and the age of the oldest pending deletion."""
    metrics.retention_queue_depth.set(await queue.depth())
    metrics.retention_oldest_pending_age.set(await queue.oldest_age_seconds())
