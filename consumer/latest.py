"""``latest`` bookkeeping: where ``latest`` should point under the repository's policy, and keeping it there.

Modes (``policies[].latest.mode``):

- ``highest-semver``: the digest of the highest SemVer tag (``consumer.semver``; pre-releases only with
  ``include_prereleases``). It never moves ``latest`` backwards: when the tags on ``latest``'s digest
  name a version at least as high as the candidate (or, if they no longer name one, the version
  ``latest`` was last seen at on that digest), ``latest`` stays. A backport push of 1.4.9 after 2.0.0
  therefore changes nothing, while a push of ``latest`` itself onto an older or unversioned image is
  stale and, under ``fix``, is moved back to the highest version.
- ``newest-push``: the digest of the most recently pushed tag other than ``latest``.
- ``manual``: nothing is expected; only ``latest``'s digest is reported.

Actions: ``report`` marks the repository stale (API, audit ``latest_stale`` once per stale spell, the
``latest_stale_repositories`` gauge); ``fix`` GETs the expected manifest by digest with its own media
type and PUTs it as ``latest`` (audit ``latest_fix``). The registry then sends a push event for
``latest`` with the expected digest, which evaluates as fresh: no loop. Until that event arrives, a
pending marker keeps other events of the repository from PUTting the same fix again.

Per event the work is O(log n) in the number of tags: the version index (``consumer.version_index``)
gives the highest version, the tag index the newest push, and only the tags of ``latest``'s own digest
are read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from consumer.audit import AuditLog
from consumer.envelope import Change, ChangeKind
from consumer.errors import RegistryError
from consumer.index import TagIndex, TagInfo, text
from consumer.locks import KeyedLocks
from consumer.metrics import Metrics
from consumer.policy import LATEST, LatestPolicy, PolicySet
from consumer.rediskeys import RedisKeys
from consumer.registry_client import RegistryClient
from consumer.semver import Version, parse
from consumer.version_index import VersionIndex

log = logging.getLogger(__name__)
# How long a PUT of latest is trusted to be on its way (its push event not yet indexed).
PENDING_FIX_SECONDS = 120
# Pre-release-only versions skipped while looking for the highest release, at most.
MAX_VERSION_SKIPS = 64
_TAG_CHANGES = (ChangeKind.TAG_PUSH, ChangeKind.TAG_DELETE, ChangeKind.DIGEST_DELETE)


@dataclass(frozen=True, slots=True)
class LatestStatus:
    """Where ``latest`` is and where its policy wants it."""

    repository: str
    mode: str | None
    digest: str | None
    expected_tag: str | None
    expected_digest: str | None
    stale: bool


class LatestKeeper:
    """Evaluates and (under ``fix``) corrects ``latest`` for each repository with a ``latest`` policy."""

    def __init__(
        self,
        *,
        redis: Redis,
        keys: RedisKeys,
        index: TagIndex,
        versions: VersionIndex,
        policies: PolicySet,
        audit: AuditLog,
        metrics: Metrics,
        registry: RegistryClient | None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._index = index
        self._versions = versions
        self._policies = policies
        self._audit = audit
        self._metrics = metrics
        self._registry = registry
        self._locks = KeyedLocks()

    def wants(self, change: Change) -> bool:
        """A change of a tag in a repository whose policy keeps ``latest``."""
        if change.kind not in _TAG_CHANGES:
            return False
        policy = self._policies.policy_for(change.repository)
        return policy is not None and policy.latest is not None

    async def on_change(self, change: Change) -> None:
        """Hook listener: re-evaluate after any change of a tag."""
        if not self.wants(change):
            return
        if change.tag:
            tags = [change.tag]
        else:
            tags = await self._index.deleted_tags(change.repository, change.digest or "")
        # Bring the version index up to date for this event's tags before reading it.
        await self._versions.sync(change.repository, tags)
        await self.evaluate(change.repository, cause=change)

    async def resync(self, repository: str) -> None:
        """After a repair of the index (reconciliation): rebuild the version index (shared with retention,
        and the repairs reached no listener), then evaluate."""
        await self._versions.rebuild(repository)
        await self.evaluate(repository)

    async def status(self, repository: str) -> LatestStatus:
        """The current assessment, without acting on it (what the read API answers)."""
        policy = self._policies.policy_for(repository)
        if policy is None or policy.latest is None:
            current = (await self._index.get_tags(repository, [LATEST])).get(LATEST)
            return LatestStatus(repository, None, current.digest if current else None, None, None, False)
        status, _ = await self._assess(repository, policy.latest)
        return status

    async def evaluate(self, repository: str, cause: Change | None = None) -> LatestStatus | None:
        """Assess ``latest`` and act on the policy's ``action``; None when no policy manages it.

        ``cause``: the event that triggered this; when it is a push of ``latest`` that breaks the policy,
        the report names who pushed it (under ``fix`` too, before the fix).
        """
        policy = self._policies.policy_for(repository)
        if policy is None or policy.latest is None:
            # The policy may have been removed from the configuration since the repository was marked.
            if await self._redis.zrem(self._keys.latest_stale, repository):
                await self.refresh_gauge()
            return None
        async with self._locks.hold(repository):
            status, version = await self._assess(repository, policy.latest)
            state = self._keys.repo(repository).latest_state
            fields: dict[FieldT, EncodableT] = {
                "mode": policy.latest.mode,
                "digest": status.digest or "",
                "expected_tag": status.expected_tag or "",
                "expected_digest": status.expected_digest or "",
            }
            if version is not None and status.digest is not None and not status.stale:
                # The high-water mark: the version latest is known at on this digest.
                fields.update({"version_tag": version, "version_digest": status.digest})
            await self._redis.hset(state, mapping=fields)
            if not status.stale:
                # latest is where it should be: a fix that was on its way has arrived.
                await self._redis.hdel(state, "pending_digest", "pending_until")
            pushed = cause is not None and cause.kind is ChangeKind.TAG_PUSH and cause.tag == LATEST
            breaker = cause if pushed and status.stale else None
            if status.stale and policy.latest.action == "fix":
                if breaker is not None:
                    await self._record_stale(status, breaker)
                fixed = await self._fix(status)
                await self._set_stale(repository, not fixed, status, report=breaker is None)
            else:
                await self._set_stale(repository, status.stale, status, breaker=breaker)
        return status

    async def refresh_gauge(self) -> None:
        """Set the stale gauge from Redis (shared by every replica)."""
        self._metrics.latest_stale_repositories.set(await self._redis.zcard(self._keys.latest_stale))

    # -- assessment --------------------------------------------------------------------------------

    async def _assess(self, repository: str, policy: LatestPolicy) -> tuple[LatestStatus, str | None]:
        """The status, and the version tag ``latest`` is at when that is known (highest-semver only)."""
        current = (await self._index.get_tags(repository, [LATEST])).get(LATEST)
        digest = current.digest if current is not None else None
        if policy.mode == "manual":
            return LatestStatus(repository, policy.mode, digest, None, None, False), None
        if policy.mode == "newest-push":
            newest = [t for t in await self._index.newest_tags(repository, 2) if t != LATEST][:1]
            target = (await self._index.get_tags(repository, newest)).get(newest[0]) if newest else None
            return self._compare(repository, policy, digest, target), None
        target = await self._highest(repository, policy.include_prereleases)
        at = await self._version_of(repository, digest) if digest is not None else None
        if at is not None and target is not None and target.digest != digest:
            at_version, target_version = parse(at), parse(target.tag)
            if at_version is not None and target_version is not None and target_version <= at_version:
                # Moving latest to the candidate would move it backwards (or sideways): it stays.
                return LatestStatus(repository, policy.mode, digest, at, digest, False), at
        status = self._compare(repository, policy, digest, target)
        return status, (target.tag if target is not None and not status.stale else at)

    @staticmethod
    def _compare(repository: str, policy: LatestPolicy, digest: str | None, target: TagInfo | None) -> LatestStatus:
        if target is None:
            # Nothing for latest to follow: whatever it is (or is not) cannot be wrong.
            return LatestStatus(repository, policy.mode, digest, None, None, False)
        return LatestStatus(repository, policy.mode, digest, target.tag, target.digest, digest != target.digest)

    async def _version_of(self, repository: str, digest: str) -> str | None:
        """The highest version tag on ``digest``, else the remembered version of latest on that digest."""
        manifest = await self._index.get_manifest(repository, digest)
        best: tuple[Version, str] | None = None
        for tag in manifest.tags if manifest is not None else []:
            version = parse(tag)
            if version is not None and (best is None or version > best[0]):
                best = (version, tag)
        if best is not None:
            return best[1]
        raw = await self._redis.hmget(self._keys.repo(repository).latest_state, ["version_tag", "version_digest"])
        remembered, seen_on = (text(v) if v is not None else None for v in raw)
        return remembered if remembered and seen_on == digest else None

    async def _highest(self, repository: str, include_prereleases: bool) -> TagInfo | None:
        """The live tag with the highest version; O(log n) per step, skipping pre-release-only versions."""
        key = self._keys.repo(repository).versions
        upper = "+"
        for _ in range(MAX_VERSION_SKIPS):
            members = await self._redis.zrevrangebylex(key, upper, "-", start=0, num=1)
            if not members:
                return None
            member = text(members[0])
            sort_key, tag = member.rsplit(" ", 1)
            version = parse(tag)
            if version is not None and version.is_prerelease and not include_prereleases:
                # A release of this MAJOR.MINOR.PATCH would sort above its pre-releases: there is none,
                # so jump below every member of this version number at once.
                upper = "(" + sort_key[: sort_key.index("-")] + "-"
                continue
            info = (await self._index.get_tags(repository, [tag])).get(tag)
            if info is not None:
                return info
            upper = "(" + member  # the version index lags behind a delete: try the next one
        log.warning("no release version found among the highest versions", extra={"repository": repository})
        return None

    # -- acting ------------------------------------------------------------------------------------

    async def _fix(self, status: LatestStatus) -> bool:
        """PUT the expected manifest as latest; True when it was PUT (or a PUT is already on its way)."""
        repo, expected = status.repository, status.expected_digest
        if expected is None:
            return False
        state = self._keys.repo(repo).latest_state
        pending, until = await self._redis.hmget(state, ["pending_digest", "pending_until"])
        if pending is not None and text(pending) == expected and float(text(until or b"0")) > time.time():
            return True
        if self._registry is None:
            log.error("latest is stale and action is fix, but no registry is configured", extra={"repository": repo})
            return False
        try:
            manifest = await self._registry.get_manifest(repo, expected)
            if manifest is None:
                log.warning(
                    "the expected manifest is gone from the registry", extra={"repository": repo, "digest": expected}
                )
                return False
            await self._registry.put_manifest(repo, LATEST, manifest.body, manifest.media_type)
        except RegistryError as exc:
            log.warning("fixing latest failed", extra={"repository": repo, "digest": expected, "error": str(exc)})
            return False
        await self._redis.hset(
            state, mapping={"pending_digest": expected, "pending_until": str(time.time() + PENDING_FIX_SECONDS)}
        )
        self._metrics.latest_fixes.inc()
        await self._audit.record(
            "latest_fix",
            repo,
            tag=LATEST,
            digest=expected,
            detail=f"latest moved from {status.digest or '(none)'} to {expected} ({status.expected_tag}, "
            f"mode {status.mode})",
        )
        log.info("latest fixed", extra={"repository": repo, "digest": expected, "tag": status.expected_tag})
        return True

    async def _set_stale(
        self, repository: str, stale: bool, status: LatestStatus, *, report: bool = True, breaker: Change | None = None
    ) -> None:
        """Mark or unmark; a new stale spell is reported once (unless the caller has reported it)."""
        key = self._keys.latest_stale
        if stale:
            added = await self._redis.zadd(key, {repository: time.time()}, nx=True)
            if added and report:
                await self._record_stale(status, breaker)
        else:
            await self._redis.zrem(key, repository)
        await self.refresh_gauge()

    async def _record_stale(self, status: LatestStatus, breaker: Change | None) -> None:
        detail = f"latest should be {status.expected_digest} ({status.expected_tag}, mode {status.mode})"
        if breaker is not None:
            detail = f"a push of latest onto {status.digest} breaks the policy; " + detail
        await self._audit.record(
            "latest_stale",
            status.repository,
            tag=LATEST,
            digest=status.digest,
            actor=breaker.actor if breaker else None,
            addr=breaker.addr if breaker else None,
            user_agent=breaker.user_agent if breaker else None,
            detail=detail,
        )
        log.warning(
            "latest is stale",
            extra={
                "repository": status.repository,
                "digest": status.digest,
                "expected_digest": status.expected_digest,
                "actor": breaker.actor if breaker else None,
            },
        )

    async def stale_repositories(self, count: int) -> list[str]:
        """Up to ``count`` repositories marked stale, longest stale first."""
        return [text(r) for r in await self._redis.zrange(self._keys.latest_stale, 0, count - 1)]

    async def is_stale(self, repository: str) -> bool:
        """Whether the repository is currently marked stale."""
        return await self._redis.zscore(self._keys.latest_stale, repository) is not None
