"""Reconciliation: make the index equal the registry again after lost events.

The registry drops queued notifications when it restarts and ``garbage-collect`` sends none, so the
index drifts. A run walks ``/v2/_catalog`` and every repository's ``tags/list`` (``Link`` pagination),
HEADs each tag for its digest, and compares with the index:

- ``missing_repository``: in the catalog, never seen by the index (its tags then count as missing_tag);
- ``missing_tag``: the registry has the tag, the index does not;
- ``wrong_digest``: both have it, on different digests;
- ``ghost_tag``: the index has a live tag the registry does not;
- ``ghost_manifest``: the index has a live untagged manifest the registry answers 404 for (GC).

Repairs go through the index's own scripts as synthetic events (``TagIndex.apply``), so they obey the
same last-writer-wins rules as real events. Their clock is the moment *before* the repository's
registry reads began: an event newer than that observation (a push or delete racing the run) wins
over the repair, and an older event delivered late loses to it, as it should, because the registry
already reflected it when it was read. The registry's and the consumer's clocks are assumed to agree
(NTP); a skew widens that race window by the skew. Tags pushed after the observation are not judged.

Repairs are not registry events: they do not reach the event hooks (so they are never unexpected
deletions); they are audited as ``reconcile_repair`` and counted in ``reconcile_drift_total{kind}``, and
listeners registered with ``subscribe`` are told which repositories changed (``latest`` re-evaluates).
One run at a time across replicas (a Redis lock).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from consumer.audit import AuditLog
from consumer.envelope import Change, ChangeKind
from consumer.index import TagIndex
from consumer.metrics import Metrics
from consumer.rediskeys import RedisKeys
from consumer.registry_client import INDEX_MEDIA_TYPES, ManifestHead, RegistryClient

log = logging.getLogger(__name__)
RepairListener = Callable[[str], Awaitable[None]]
ACTOR = "registry-consumer/reconcile"
LOCK_TIMEOUT_SECONDS = 3600
_PAGE = 500


@dataclass(frozen=True, slots=True)
class Drift:
    """One difference found (and repaired)."""

    kind: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    index_digest: str | None = None


@dataclass(slots=True)
class ReconcileReport:
    """What one run looked at and what it repaired."""

    repositories: int = 0
    tags: int = 0
    drift: Counter[str] = field(default_factory=Counter)
    repairs: list[Drift] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"repositories": self.repositories, "tags": self.tags, "drift": dict(sorted(self.drift.items()))}


class ReconcileBusy(RuntimeError):
    """Another run holds the lock."""


class Reconciler:
    """Compares the index with the registry and repairs it (see the module docstring)."""

    def __init__(
        self,
        *,
        redis: Redis,
        keys: RedisKeys,
        index: TagIndex,
        registry: RegistryClient,
        audit: AuditLog,
        metrics: Metrics,
        head_concurrency: int = 8,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._index = index
        self._registry = registry
        self._audit = audit
        self._metrics = metrics
        self._heads = asyncio.Semaphore(head_concurrency)
        self._listeners: list[RepairListener] = []

    def subscribe(self, listener: RepairListener) -> None:
        """Call ``listener(repository)`` after a repository's index was repaired."""
        self._listeners.append(listener)

    async def run(self, repository: str | None = None) -> ReconcileReport:
        """Reconcile one repository or all of them; raises :class:`ReconcileBusy` if a run is going on."""
        lock = self._redis.lock(self._keys.reconcile_lock, timeout=LOCK_TIMEOUT_SECONDS, blocking=False)
        if not await lock.acquire():
            raise ReconcileBusy("another reconciliation is running")
        report = ReconcileReport()
        try:
            if repository is not None:
                names = [repository]
            else:
                names = sorted({*await self._registry.catalog(), *await self._index_repositories()})
            for name in names:
                await self._repository(name, report)
        except Exception:
            self._metrics.reconcile_runs.labels("error").inc()
            raise
        finally:
            await lock.release()
        self._metrics.reconcile_runs.labels("ok").inc()
        log.info("reconciliation done", extra=report.as_dict())
        return report

    async def _index_repositories(self) -> list[str]:
        names: list[str] = []
        last: str | None = None
        while page := await self._index.list_repositories(_PAGE, last):
            names.extend(page)
            last = page[-1]
        return names

    async def _repository(self, repository: str, report: ReconcileReport) -> None:
        observed_us = time.time_ns() // 1000  # before any registry read: see the module docstring
        tags = await self._registry.tags(repository)  # None: the registry has no such repository
        heads = await self._head_all(repository, tags or [])
        index_tags = {t.tag: t for t in await self._index.list_tags(repository)}
        report.repositories += 1
        report.tags += len(heads)
        drift: list[Drift] = []
        if heads and not index_tags and not await self._index.has_repository(repository):
            drift.append(Drift("missing_repository", repository))
        for tag, head in sorted(heads.items()):
            known = index_tags.get(tag)
            if known is None:
                drift.append(Drift("missing_tag", repository, tag, head.digest))
            elif known.digest != head.digest and known.pushed_at_us <= observed_us:
                drift.append(Drift("wrong_digest", repository, tag, head.digest, known.digest))
        for tag, known in sorted(index_tags.items()):
            if tag not in heads and known.pushed_at_us <= observed_us:
                drift.append(Drift("ghost_tag", repository, tag, None, known.digest))
        for item in drift:
            await self._repair(item, heads.get(item.tag or ""), observed_us)
        # After the tag repairs: a manifest that lost its last tag in them (a moved tag whose old digest
        # garbage collection removed) is judged as untagged in the same run.
        ghosts = await self._ghost_manifests(repository, observed_us)
        for item in ghosts:
            await self._repair(item, None, observed_us)
        drift += ghosts
        for item in drift:
            report.drift[item.kind] += 1
            report.repairs.append(item)
        if drift:
            for listener in self._listeners:
                try:
                    await listener(repository)
                except Exception:
                    log.exception("reconcile listener failed", extra={"repository": repository})

    async def _head_all(self, repository: str, tags: list[str]) -> dict[str, ManifestHead]:
        async def head(tag: str) -> tuple[str, ManifestHead | None]:
            async with self._heads:
                return tag, await self._registry.head_manifest(repository, tag)

        results = await asyncio.gather(*(head(t) for t in tags))
        # A tag listed and gone before its HEAD is simply not there.
        return {tag: h for tag, h in results if h is not None}

    async def _children(self, repository: str, head: ManifestHead) -> tuple[str, ...]:
        """An index's child manifests, read from the registry: without them retention would have to keep every
        untagged manifest of the repository (``index_children_unknown``)."""
        if head.media_type not in INDEX_MEDIA_TYPES:
            return ()
        async with self._heads:
            manifest = await self._registry.get_manifest(repository, head.digest)
        if manifest is None:
            return ()
        try:
            listed = json.loads(manifest.body).get("manifests") or []
            return tuple(str(m["digest"]) for m in listed if isinstance(m, dict) and m.get("digest"))
        except (ValueError, AttributeError, TypeError):
            return ()

    async def _ghost_manifests(self, repository: str, observed_us: int) -> list[Drift]:
        ghosts: list[Drift] = []
        for manifest in await self._index.list_manifests(repository):
            if manifest.tags or (manifest.pushed_at_us or 0) > observed_us:
                continue
            async with self._heads:
                head = await self._registry.head_manifest(repository, manifest.digest)
            if head is None:
                ghosts.append(Drift("ghost_manifest", repository, None, None, manifest.digest))
        return ghosts

    async def _repair(self, item: Drift, head: ManifestHead | None, observed_us: int) -> None:
        if item.kind in ("missing_tag", "wrong_digest") and head is not None:
            await self._index.apply(
                _synthetic(
                    ChangeKind.TAG_PUSH,
                    item.repository,
                    observed_us,
                    tag=item.tag,
                    digest=head.digest,
                    media_type=head.media_type,
                    size=head.size,
                    references=await self._children(item.repository, head),
                )
            )
        elif item.kind == "ghost_tag":
            await self._index.apply(_synthetic(ChangeKind.TAG_DELETE, item.repository, observed_us, tag=item.tag))
        elif item.kind == "ghost_manifest":
            await self._index.apply(
                _synthetic(ChangeKind.DIGEST_DELETE, item.repository, observed_us, digest=item.index_digest)
            )
        self._metrics.reconcile_drift.labels(item.kind).inc()
        detail = {
            "missing_repository": "the registry has this repository; the index had never seen it",
            "missing_tag": f"the registry has the tag on {item.digest}; the index did not have it",
            "wrong_digest": f"the registry has the tag on {item.digest}; the index had {item.index_digest}",
            "ghost_tag": f"the index had the tag on {item.index_digest}; the registry does not have it",
            "ghost_manifest": "the index had this untagged manifest; the registry does not (garbage collection)",
        }[item.kind]
        await self._audit.record(
            "reconcile_repair",
            item.repository,
            tag=item.tag,
            digest=item.digest or item.index_digest,
            actor=ACTOR,
            detail=f"{item.kind}: {detail}",
        )
        log.info(
            "index repaired",
            extra={
                "repository": item.repository,
                "kind": item.kind,
                "tag": item.tag,
                "digest": item.digest or item.index_digest,
            },
        )


def _synthetic(
    kind: ChangeKind,
    repository: str,
    clock_us: int,
    *,
    tag: str | None = None,
    digest: str | None = None,
    media_type: str | None = None,
    size: int | None = None,
    references: tuple[str, ...] = (),
) -> Change:
    """A repair as an index change, with the observation's clock and a unique event id."""
    return Change(
        kind=kind,
        action="push" if kind is ChangeKind.TAG_PUSH else "delete",
        event_id=f"reconcile-{uuid.uuid4()}",
        repository=repository,
        timestamp_us=clock_us,
        tag=tag,
        digest=digest,
        media_type=media_type,
        size=size,
        references=references,
        actor=ACTOR,
    )
