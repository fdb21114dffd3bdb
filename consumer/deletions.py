"""Deletions nobody planned: every delete event without a matching intent is counted, audited and logged.

``protected`` means the deletion hit a tag the repository's policy protects (``latest`` always counts):
for a tag delete, that tag; for a digest delete, any tag the delete took with it. Those tags are read
from the manifest's record (``TagIndex.deleted_tags``), which the delete script fills in, because by the
time a listener runs the live set has already lost them.

A foreign digest delete is one report (kind ``manifest``); the registry's per-tag events of the same
request are folded into it, not counted again. Events of one repository are judged one at a time, in
the order they were applied, so the digest's event is judged before its per-tag events (if those
arrive first, reordered by the registry's retries, each is reported as a tag deletion).

With ``on_unexpected_deletion.revoke_actor``, the actor's tokens are revoked with a subject cutoff
(every token of that subject issued up to now), and that is audited as ``actor_revoked``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from consumer.audit import AuditLog
from consumer.envelope import Change, ChangeKind
from consumer.index import TagIndex
from consumer.intents import REPORTED, DeletionIntents
from consumer.locks import KeyedLocks
from consumer.metrics import Metrics
from consumer.policy import LATEST, PolicySet

log = logging.getLogger(__name__)
# Revokes every token of a subject issued up to now; returns the cutoff in force (unix seconds), or None
# when this process has no revocation list.
SubjectRevoker = Callable[[str], Awaitable[int | None]]


class DeletionWatch:
    """The listener that tells the consumer's own deletions from everyone else's."""

    def __init__(
        self,
        *,
        index: TagIndex,
        intents: DeletionIntents,
        audit: AuditLog,
        policies: PolicySet,
        metrics: Metrics,
        revoke_subject: SubjectRevoker | None = None,
    ) -> None:
        self._index = index
        self._intents = intents
        self._audit = audit
        self._policies = policies
        self._metrics = metrics
        self._revoke_subject = revoke_subject
        self._locks = KeyedLocks()

    @staticmethod
    def wants(change: Change) -> bool:
        """Only deletes can be unexpected."""
        return change.kind in (ChangeKind.TAG_DELETE, ChangeKind.DIGEST_DELETE)

    async def on_change(self, change: Change) -> None:
        """Hook listener: judge delete events, ignore everything else."""
        if not self.wants(change):
            return
        async with self._locks.hold(change.repository):
            await self._judge(change)

    def _is_protected(self, repository: str, tag: str) -> bool:
        policy = self._policies.policy_for(repository)
        return policy.is_protected(tag) if policy is not None else tag == LATEST

    async def _judge(self, change: Change) -> None:
        repo = change.repository
        if change.kind is ChangeKind.TAG_DELETE:
            assert change.tag is not None
            digest = await self._index.last_digest(repo, change.tag)
            if await self._intents.consume(change, digest):
                return
            if await self._intents.request_state(repo, change.request_id) == REPORTED:
                return  # one of the per-tag events of a foreign digest delete already reported
            kind, tags, detail = "tag", [change.tag], None
        else:
            if await self._intents.consume(change):
                return
            await self._intents.mark_reported(repo, change.request_id)
            digest = change.digest
            tags = await self._index.deleted_tags(repo, digest or "")
            kind = "manifest"
            detail = f"tags removed with it: {', '.join(tags)}" if tags else "no tags pointed at it"
        protected = any(self._is_protected(repo, t) for t in tags)
        self._metrics.unexpected_deletions.labels(kind, "true" if protected else "false").inc()
        await self._audit.record(
            "unexpected_deletion",
            repo,
            tag=change.tag,
            digest=digest,
            actor=change.actor,
            addr=change.addr,
            user_agent=change.user_agent,
            protected=protected,
            detail=detail,
        )
        log.warning(
            "unexpected deletion",
            extra={
                "repository": repo,
                "kind": kind,
                "tag": change.tag,
                "digest": digest,
                "tags": tags,
                "protected": protected,
                "actor": change.actor,
                "addr": change.addr,
                "user_agent": change.user_agent,
                "event_id": change.event_id,
            },
        )
        await self._maybe_revoke(change)

    async def _maybe_revoke(self, change: Change) -> None:
        policy = self._policies.policy_for(change.repository)
        if policy is None or not policy.on_unexpected_deletion.revoke_actor:
            return
        if not change.actor:
            log.warning("cannot revoke an anonymous actor", extra={"repository": change.repository})
            return
        cutoff = await self._revoke_subject(change.actor) if self._revoke_subject is not None else None
        if cutoff is None:
            log.error(
                "on_unexpected_deletion.revoke_actor is set but token revocation is not available",
                extra={"repository": change.repository, "actor": change.actor},
            )
            return
        await self._audit.record(
            "actor_revoked",
            change.repository,
            tag=change.tag,
            digest=change.digest,
            actor=change.actor,
            addr=change.addr,
            user_agent=change.user_agent,
            detail=f"every token of subject {change.actor} issued at or before {cutoff} (unix seconds) is revoked",
        )
        log.warning(
            "actor revoked after an unexpected deletion",
            extra={"repository": change.repository, "actor": change.actor, "cutoff": cutoff},
        )
