"""Retention: which tags and manifests a repository's policy keeps, decided on each event and in full.

Semantics
---------
- A tag is kept when any keep rule keeps it (a union). ``latest`` and protected tags are always kept and
  are not counted by the count rules: ``last_pushed: 3`` keeps the three most recently pushed *other*
  tags, ``semver_latest: 5`` the five highest other version tags.
- Versions are strict SemVer with an optional ``v`` (``consumer.semver``), ordered by SemVer precedence
  with pre-releases included where precedence puts them: ``1.10.0 > 1.9.0`` and
  ``1.9.0 < 2.0.0-rc.1 < 2.0.0``, so ``semver_latest`` can keep a release candidate. ``v1.0.0`` and
  ``1.0.0`` rank equal; the tag name breaks ties (as everywhere, by bytes).
- ``pushed_within``/``pulled_within`` use the push and pull times the events carried. A tag never pulled
  counts as pulled when pushed (and a push also counts as a pull: a fresh tag is never "unused").
- ``tags`` patterns: a pattern starting with ``^`` is a regular expression, anything else a glob matching
  the whole tag (``consumer.policy.TagPattern``).
- The rule a plan names is the first that keeps the tag in this order: ``latest``, ``protected``, the
  policy's keep rules in the order written, ``referrer``. A tag no rule keeps says ``no_keep_rule``.

Deleting
--------
On a registry that deletes tags by name (3.x) an expired tag is deleted by name; its manifest stays until
it has been untagged for ``untagged.delete_after``. On one that cannot (2.x, or while unknown) a digest is
deleted only when every live tag on it is expired and no live index lists it; otherwise the expired tag
is kept and the plan says why (``shared_digest``, ``index_child``). An untagged manifest is deleted once
untagged for ``untagged.delete_after``, unless a live index lists it (``index_child``: children go only
after their index) or its ``subject`` is a live manifest (``referrer``); cosign-style tags
``sha256-<hex>.<kind>`` are kept while the manifest they name is live. Without ``untagged`` untagged
manifests are kept. Grace starts at the push for a push by digest, and when the sweep first sees the
manifest untagged for a manifest whose tag moved away (no event says so).

Cost per event
--------------
A push can only push tags out of the count windows, and only at the window boundary; a delete only widens
them. So an event is judged by looking at: the event's tag, and for each count rule the few counted tags
just below the boundary (``BOUNDARY_SLACK`` of them, so concurrent pushes are covered; the sweep covers
the rest). Their ranks come from sorted sets: the tag index's ``tags`` (push time), the shared version
index (``consumer.version_index``), and two small per-repository sets of the protected live tags, whose
counts above a tag (``ZCOUNT``/``ZLEXCOUNT``) are subtracted to get the rank among counted tags. Every
lookup is O(log n). The tags at a window's edge are one page read from absolute rank N, long enough for
up to ``_PAGE_PROTECTED`` protected tags above it; with more, a search takes over that repeats only while
it discovers protected tags above the edge. On a registry without tag deletes the other tags of a
candidate's digest are judged too (O(k log n) for k tags on that digest). The full plan (every tag) is
computed on demand for the API and by the periodic sweep, which also covers the time-based rules and
repairs the derived sets. Measured in ``bench/retention_bench.py`` (``bench/RESULTS.md``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from consumer.deleter import Action, Deletion, DeletionQueue
from consumer.durations import format_duration_seconds
from consumer.envelope import Change, ChangeKind
from consumer.errors import RegistryError
from consumer.index import ManifestInfo, TagIndex, TagInfo, text
from consumer.locks import KeyedLocks
from consumer.metrics import Metrics
from consumer.policy import (
    LATEST,
    KeepLastPushed,
    KeepPulledWithin,
    KeepPushedWithin,
    KeepRule,
    KeepSemverLatest,
    KeepTags,
    PolicySet,
    RetentionPolicy,
    matches_any,
)
from consumer.rediskeys import RedisKeys, RepoKeys
from consumer.registry_client import INDEX_MEDIA_TYPES
from consumer.version_index import VersionIndex, member_tag, version_member

log = logging.getLogger(__name__)

NO_KEEP_RULE = "no_keep_rule"
# Counted tags looked at below each count window's boundary on each event.
BOUNDARY_SLACK = 4
# How many of the newest pushes may not have reached the protected sets yet (another replica's listener lags):
# a lagging push is by definition a recent one.
_LAGGING_PUSHES = 64
# Boundaries are read in one page when at most this many live tags are protected (else searched for).
_PAGE_PROTECTED = 16
_REFERRER_TAG = re.compile(r"^(sha256|sha512)-([0-9a-f]{64}|[0-9a-f]{128})(?:\.[\w.-]+)?$")
_US = 1_000_000


def referrer_subject(tag: str) -> str | None:
    """The digest a cosign-style referrer tag (``sha256-<hex>.sig``) names, or None."""
    match = _REFERRER_TAG.match(tag)
    return None if match is None else f"{match.group(1)}:{match.group(2)}"


def lists_children(media_type: str | None) -> bool:
    """Whether a manifest's references are child manifests (an index; unknown counts, to be safe)."""
    return media_type is None or media_type in INDEX_MEDIA_TYPES


def unlisted_indexes(manifests: Iterable[ManifestInfo]) -> list[str]:
    """The live indexes (or manifests of unknown type) whose children the index does not know, sorted."""
    return sorted(m.digest for m in manifests if lists_children(m.media_type) and not m.references)


def rule_label(rule: KeepRule) -> str:
    """How a keep rule is named in plans: ``last_pushed:3``, ``pushed_within:30d``, ``tags``."""
    match rule:
        case KeepLastPushed():
            return f"last_pushed:{rule.last_pushed}"
        case KeepSemverLatest():
            return f"semver_latest:{rule.semver_latest}"
        case KeepPushedWithin():
            return f"pushed_within:{format_duration_seconds(rule.pushed_within_seconds)}"
        case KeepPulledWithin():
            return f"pulled_within:{format_duration_seconds(rule.pulled_within_seconds)}"
        case KeepTags():
            return "tags"
    raise TypeError(rule)


def _ago(now_us: int, then_us: int) -> str:
    return format_duration_seconds(max(0, now_us - then_us) // _US) + " ago"


# -- decisions (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TagFacts:
    """What decides one live tag."""

    tag: str
    digest: str
    pushed_us: int
    pulled_us: int | None
    push_rank: int | None  # among counted tags, newest push first (0-based); None when not counted
    version_rank: int | None  # among counted version tags, highest first; None when not counted or no version
    subject_live: bool = False  # a referrer tag whose subject manifest is live


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the keep rules keep a tag, which rule decided, and why."""

    keep: bool
    rule: str
    reason: str


def _kept_by(rule: KeepRule, facts: TagFacts, now_us: int) -> Verdict | None:
    label = rule_label(rule)
    match rule:
        case KeepLastPushed() if facts.push_rank is not None and facts.push_rank < rule.last_pushed:
            return Verdict(True, label, f"#{facts.push_rank + 1} most recently pushed")
        case KeepSemverLatest() if facts.version_rank is not None and facts.version_rank < rule.semver_latest:
            return Verdict(True, label, f"#{facts.version_rank + 1} highest version")
        case KeepPushedWithin() if now_us - facts.pushed_us <= rule.pushed_within_seconds * _US:
            return Verdict(True, label, f"pushed {_ago(now_us, facts.pushed_us)}")
        case KeepPulledWithin():
            used = max(facts.pulled_us or 0, facts.pushed_us)
            if now_us - used <= rule.pulled_within_seconds * _US:
                pulled = facts.pulled_us is not None and facts.pulled_us >= facts.pushed_us
                what = "pulled" if pulled else "pushed (not pulled since)"
                return Verdict(True, label, f"{what} {_ago(now_us, used)}")
        case KeepTags():
            pattern = matches_any(rule.tags, facts.tag)
            if pattern is not None:
                return Verdict(True, f"tags:{pattern}", f"matches {pattern}")
    return None


def judge_tag(facts: TagFacts, policy: RetentionPolicy, now_us: int) -> Verdict:
    """The keep rules' verdict on one tag (before looking at the other tags of its digest)."""
    if facts.tag == LATEST:
        return Verdict(True, "latest", "latest is always kept")
    if policy.is_protected(facts.tag):
        return Verdict(True, "protected", "protected tag")
    for rule in policy.keep:
        verdict = _kept_by(rule, facts, now_us)
        if verdict is not None:
            return verdict
    if facts.subject_live:
        return Verdict(True, "referrer", f"refers to live manifest {referrer_subject(facts.tag)}")
    return Verdict(False, NO_KEEP_RULE, "no keep rule keeps it")


@dataclass(frozen=True, slots=True)
class TagDecision:
    """The plan for one tag: keep it, or the deletion that removes it."""

    tag: str
    digest: str
    pushed_us: int
    keep: bool
    rule: str
    reason: str
    deletion: Deletion | None = None


def decide_tag(
    repository: str,
    facts: TagFacts,
    verdict: Verdict,
    siblings: Sequence[tuple[str, Verdict]],
    parents: Sequence[str],
    can_delete_tags: bool,
) -> TagDecision:
    """Turn a tag's verdict into a plan, given the verdicts on the other live tags of its digest and the
    live indexes that list the digest."""

    def keep(rule: str, reason: str) -> TagDecision:
        return TagDecision(facts.tag, facts.digest, facts.pushed_us, True, rule, reason)

    if verdict.keep:
        return keep(verdict.rule, verdict.reason)
    if can_delete_tags:
        deletion = Deletion(repository, Action.TAG, facts.digest, tag=facts.tag, rule=verdict.rule,
                            reason=verdict.reason)
        return TagDecision(facts.tag, facts.digest, facts.pushed_us, False, verdict.rule, verdict.reason, deletion)
    if parents:
        return keep("index_child", f"expired, but its digest is listed by live index {sorted(parents)[0]}")
    kept = sorted((tag, v) for tag, v in siblings if v.keep)
    if kept:
        tag, v = kept[0]
        return keep("shared_digest", f"expired, but its digest is also tag {tag}, kept by {v.rule}")
    tags = tuple(sorted([facts.tag, *(tag for tag, _ in siblings)]))
    reason = verdict.reason + ("" if len(tags) == 1 else f"; deletes the digest with {', '.join(tags)}")
    deletion = Deletion(repository, Action.DIGEST, facts.digest, tags=tags, rule=verdict.rule, reason=reason)
    return TagDecision(facts.tag, facts.digest, facts.pushed_us, False, verdict.rule, reason, deletion)


@dataclass(frozen=True, slots=True)
class ManifestDecision:
    """The plan for one untagged manifest."""

    digest: str
    untagged_since_us: int
    keep: bool
    rule: str
    reason: str
    deletion: Deletion | None = None


def decide_untagged(
    repository: str,
    digest: str,
    untagged_since_us: int,
    parents: Sequence[str],
    live_subject: str | None,
    policy: RetentionPolicy,
    now_us: int,
    unlisted_index: str | None = None,
) -> ManifestDecision:
    """Plan one live manifest that no live tag points at.

    ``unlisted_index``: a live index of the repository whose children are not known (its push event was
    lost and reconciliation only saw its digest, or the registry sends no ``references``): any untagged
    manifest may be one of them, so none goes until they are known. (An untagged index is never held back
    by another: indexes are not children, and two would otherwise keep each other forever.)
    """

    def keep(rule: str, reason: str) -> ManifestDecision:
        return ManifestDecision(digest, untagged_since_us, True, rule, reason)

    if parents:
        return keep("index_child", f"listed by live index {sorted(parents)[0]}")
    if unlisted_index is not None:
        return keep("index_children_unknown", f"live index {unlisted_index} has no recorded children")
    if live_subject is not None:
        return keep("referrer", f"refers to live manifest {live_subject}")
    if policy.untagged is None:
        return keep("untagged_kept", "the policy has no untagged rule")
    grace = policy.untagged.delete_after_seconds
    label = f"untagged:{format_duration_seconds(grace)}"
    if now_us - untagged_since_us < grace * _US:
        return keep("untagged_grace", f"untagged since {_ago(now_us, untagged_since_us)}, within {label}")
    reason = f"untagged since {_ago(now_us, untagged_since_us)}"
    deletion = Deletion(repository, Action.DIGEST, digest, rule=label, reason=reason)
    return ManifestDecision(digest, untagged_since_us, False, label, reason, deletion)


@dataclass(frozen=True, slots=True)
class Plan:
    """Every live tag and untagged manifest of a repository with its decision."""

    repository: str
    dry_run: bool
    tags: list[TagDecision]
    untagged: list[ManifestDecision]

    def deletions(self) -> list[Deletion]:
        """What the plan deletes, each once, oldest first (tags by push time, manifests by untagged time)."""
        timed: dict[str, tuple[int, Deletion]] = {}
        for decision in self.tags:
            if decision.deletion is not None:
                timed.setdefault(decision.deletion.claim, (decision.pushed_us, decision.deletion))
        for manifest in self.untagged:
            if manifest.deletion is not None:
                timed.setdefault(manifest.deletion.claim, (manifest.untagged_since_us, manifest.deletion))
        return [d for _, d in sorted(timed.values(), key=lambda pair: (pair[0], pair[1].claim))]


def counted_orders(policy: RetentionPolicy, tags: Iterable[TagInfo]) -> tuple[dict[str, int], dict[str, int]]:
    """Push rank and version rank of every counted tag, ordered exactly as the sorted sets order them."""
    counted = [t for t in tags if not policy.is_protected(t.tag)]
    by_push = sorted(counted, key=lambda t: (t.pushed_at_us, t.tag.encode()), reverse=True)
    versions = sorted(
        ((member.encode(), t.tag) for t in counted if (member := version_member(t.tag)) is not None), reverse=True
    )
    return {t.tag: i for i, t in enumerate(by_push)}, {tag: i for i, (_, tag) in enumerate(versions)}


def build_plan(
    repository: str,
    policy: RetentionPolicy,
    tags: Sequence[TagInfo],
    manifests: Sequence[ManifestInfo],
    *,
    untagged_since: Mapping[str, int],
    subjects: Mapping[str, str],
    now_us: int,
    can_delete_tags: bool,
) -> Plan:
    """The full plan of a repository from a snapshot of its index (O(n log n))."""
    push_rank, version_rank = counted_orders(policy, tags)
    live = {m.digest for m in manifests}
    parents: dict[str, list[str]] = {}
    for manifest in manifests:
        if lists_children(manifest.media_type):
            for child in manifest.references:
                parents.setdefault(child, []).append(manifest.digest)
    unlisted = unlisted_indexes(manifests)
    facts = {
        t.tag: TagFacts(
            t.tag, t.digest, t.pushed_at_us, t.last_pulled_at_us, push_rank.get(t.tag), version_rank.get(t.tag),
            subject_live=referrer_subject(t.tag) in live,
        )
        for t in tags
    }
    verdicts = {tag: judge_tag(f, policy, now_us) for tag, f in facts.items()}
    by_digest: dict[str, list[str]] = {}
    for t in tags:
        by_digest.setdefault(t.digest, []).append(t.tag)
    decisions = [
        decide_tag(
            repository, facts[t.tag], verdicts[t.tag],
            [(s, verdicts[s]) for s in by_digest[t.digest] if s != t.tag],
            parents.get(t.digest, []), can_delete_tags,
        )
        for t in sorted(tags, key=lambda t: t.tag)
    ]
    untagged = [
        decide_untagged(
            repository, m.digest, untagged_since.get(m.digest, now_us), parents.get(m.digest, []),
            subject if (subject := subjects.get(m.digest)) in live else None, policy, now_us,
            None if lists_children(m.media_type) else next(iter(unlisted), None),
        )
        for m in manifests
        if not m.tags and m.digest not in by_digest
    ]
    return Plan(repository, policy.dry_run, decisions, untagged)


def protected_fingerprint(policy: RetentionPolicy) -> str:
    """Identifies the protected patterns the protected sets were built for."""
    return hashlib.sha256(json.dumps([LATEST, *map(str, policy.protected)]).encode()).hexdigest()[:16]


# -- the planner on Redis ---------------------------------------------------------------------------


class RetentionPlanner:
    """Judges repositories against their retention policy, on events and in full, and queues deletions."""

    def __init__(
        self,
        redis: Redis,
        keys: RedisKeys,
        index: TagIndex,
        versions: VersionIndex,
        policies: PolicySet,
        queue: DeletionQueue,
        metrics: Metrics,
        tag_deletes: Callable[[str], Awaitable[bool]] | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``tag_deletes``: whether the registry deletes tags by name (``RegistryClient.supports_tag_delete``);
        None when no registry is configured, in which case nothing is queued and every policy only plans."""
        self._redis = redis
        self._keys = keys
        self._index = index
        self._versions = versions
        self._policies = policies
        self._queue = queue
        self._metrics = metrics
        self._tag_deletes = tag_deletes
        self._clock = clock
        lua = (resources.files("consumer") / "lua" / "retention_protected.lua").read_text()
        self._sync_protected_script = redis.register_script(lua)
        self._warned_no_registry: set[str] = set()
        self._locks = KeyedLocks()

    def policy(self, repository: str) -> RetentionPolicy | None:
        """The retention policy of ``repository``, if any."""
        policy = self._policies.policy_for(repository)
        return None if policy is None else policy.retention

    def _now_us(self) -> int:
        return int(self._clock() * _US)

    async def can_delete_tags(self, repository: str) -> bool:
        """Whether the registry deletes tags by name; False (the safe assumption) when unknown."""
        if self._tag_deletes is None:
            return False
        try:
            return await self._tag_deletes(repository)
        except RegistryError as exc:
            log.info("registry tag delete support unknown", extra={"repository": repository, "error": str(exc)})
            return False

    # -- per event ------------------------------------------------------------------------------

    def wants(self, change: Change) -> bool:
        """A push or delete in a repository with a retention policy."""
        return change.kind not in (ChangeKind.PULL, ChangeKind.IGNORED) and self.policy(change.repository) is not None

    async def on_change(self, change: Change) -> None:
        """The event listener (``EventHooks``): a repository's events are judged one at a time, in order."""
        if not self.wants(change):
            return
        async with self._locks.hold(change.repository):
            await self.evaluate(change)

    async def evaluate(self, change: Change) -> list[TagDecision]:
        """Judge what ``change`` can have changed, act on it, and return those decisions."""
        policy = self.policy(change.repository)
        if policy is None or change.kind in (ChangeKind.PULL, ChangeKind.IGNORED):
            return []
        repository = change.repository
        fingerprint = await self._track(change, policy)
        if change.kind is ChangeKind.MANIFEST_PUSH:
            return []
        await self._protected_for(repository, policy, fingerprint)
        names: set[str] = set()
        if change.kind is ChangeKind.TAG_PUSH and change.tag:
            names.add(change.tag)
        pushed_counted = change.tag is not None and not policy.is_protected(change.tag)
        is_version = change.tag is not None and version_member(change.tag) is not None
        # A push moves the windows down by one; a delete up by one (tags come back in: records).
        moved = change.kind is not ChangeKind.TAG_PUSH or pushed_counted
        push_ns = [r.last_pushed for r in policy.keep if isinstance(r, KeepLastPushed) and moved]
        version_ns = [r.semver_latest for r in policy.keep if isinstance(r, KeepSemverLatest)
                      and (change.kind is not ChangeKind.TAG_PUSH or (pushed_counted and is_version))]
        names |= await self._boundaries(repository, policy, push_ns, version_ns)
        decisions = await self._decide(repository, policy, sorted(names))
        await self._act(repository, policy, decisions, [])
        return decisions

    async def _track(self, change: Change, policy: RetentionPolicy) -> str | None:
        """Keep the derived sets up to date with this event (before anything reads them); returns the
        fingerprint of the protected patterns the protected sets were built for."""
        repo = self._keys.repo(change.repository)
        if change.tag:
            tags = [change.tag]
        elif change.kind is ChangeKind.DIGEST_DELETE and change.digest:
            tags = await self._index.deleted_tags(change.repository, change.digest)
        else:
            tags = []
        if tags:
            await self._versions.sync(change.repository, tags)
            await self._sync_protected(change.repository, policy, tags)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(repo.retention_meta, "protected")
            if change.kind in (ChangeKind.TAG_DELETE, ChangeKind.DIGEST_DELETE):
                # Planned (dry run) and now gone: no longer in the plan.
                pipe.hdel(repo.retention_dry_run, *[f"t:{t}" for t in tags], f"m:{change.digest or ''}")
            elif change.digest:
                if change.references and lists_children(change.media_type):
                    pipe.zadd(repo.parents, {f"{child} {change.digest}": 0 for child in change.references})
                if change.kind is ChangeKind.TAG_PUSH:
                    pipe.zrem(repo.untagged_since, change.digest)
                else:
                    # gt: a manifest pushed again by digest (a child of a new multi-arch push) starts its grace
                    # again, or it could go before the index that will list it arrives.
                    pipe.zadd(repo.untagged_since, {change.digest: change.timestamp_us}, gt=True)
            fingerprint, *_ = await pipe.execute()
        return None if fingerprint is None else text(fingerprint)

    async def _sync_protected(self, repository: str, policy: RetentionPolicy, tags: Iterable[str]) -> None:
        repo = self._keys.repo(repository)
        args: list[str] = []
        for tag in tags:
            args += [tag, version_member(tag) or "", "1" if policy.is_protected(tag) else "0"]
        for start in range(0, len(args), 1500):
            await self._sync_protected_script(
                keys=[repo.tags, repo.retention_protected, repo.retention_protected_versions],
                args=args[start : start + 1500],
            )

    async def _ensure_protected(self, repository: str, policy: RetentionPolicy) -> None:
        """Rebuild the protected sets when the policy's protected patterns changed (O(n), once)."""
        raw = await self._redis.hget(self._keys.repo(repository).retention_meta, "protected")
        await self._protected_for(repository, policy, None if raw is None else text(raw))

    async def _protected_for(self, repository: str, policy: RetentionPolicy, built_for: str | None) -> None:
        """``_ensure_protected`` when the fingerprint the sets were built for has been read already."""
        fingerprint = protected_fingerprint(policy)
        if built_for == fingerprint:
            return
        await self._rebuild_protected(repository, policy)
        await self._redis.hset(self._keys.repo(repository).retention_meta, "protected", fingerprint)

    async def _rebuild_protected(self, repository: str, policy: RetentionPolicy) -> None:
        repo = self._keys.repo(repository)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(repo.tags, 0, -1)
            pipe.zrange(repo.retention_protected, 0, -1)
            live, present = await pipe.execute()
        names = {text(t) for t in live if policy.is_protected(text(t))} | {text(t) for t in present}
        await self._sync_protected(repository, policy, sorted(names))

    @staticmethod
    def _queue_protected_above(pipe: Pipeline, repo: RepoKeys, score: int) -> None:
        """Queue the two reads ``_protected_above`` needs for a tag pushed at ``score``."""
        pipe.zcount(repo.retention_protected, f"({score}", "+inf")
        pipe.zrangebyscore(repo.retention_protected, score, score)

    @staticmethod
    def _protected_above(tag: str, count: Any, ties: Any) -> int:
        """How many protected tags the tags ZSET orders above ``tag``: those pushed later, and those pushed
        at the same time with a greater name (ZREVRANGE's order for equal scores)."""
        return int(count) + sum(1 for t in ties if text(t).encode() > tag.encode())

    async def _boundaries(
        self, repository: str, policy: RetentionPolicy, push_ns: Sequence[int], version_ns: Sequence[int]
    ) -> set[str]:
        """The counted tags just below each count window: push ranks [n, n + BOUNDARY_SLACK) for each n in
        ``push_ns``, version ranks likewise for ``version_ns``.

        Usually two round trips for all windows: a page from absolute rank n that is long enough to hold the
        boundary whatever the protected tags above it, then the number of protected tags above the page. The
        search of ``_push_boundary``/``_version_boundary`` takes over when many tags are protected.
        """
        if not push_ns and not version_ns:
            return set()
        repo = self._keys.repo(repository)
        width = BOUNDARY_SLACK + _PAGE_PROTECTED
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(repo.retention_protected)
            for n in push_ns:
                pipe.zrevrange(repo.tags, n, n + width - 1, withscores=True)
            for n in version_ns:
                pipe.zrevrange(repo.versions, n, n + width - 1)
            protected, *pages = await pipe.execute()
        if int(protected) > _PAGE_PROTECTED:
            found: set[str] = set()
            for n in push_ns:
                found.update(await self._push_boundary(repository, policy, n))
            for n in version_ns:
                found.update(await self._version_boundary(repository, policy, n))
            return found
        push_pages = [[(text(t), int(score)) for t, score in page] for page in pages[: len(push_ns)]]
        version_pages = [[text(m) for m in page] for page in pages[len(push_ns) :]]
        async with self._redis.pipeline(transaction=False) as pipe:
            for page in push_pages:
                if page:
                    self._queue_protected_above(pipe, repo, page[0][1])
            for members in version_pages:
                if members:
                    pipe.zlexcount(repo.retention_protected_versions, f"({members[0]}", "+")
            replies = iter(await pipe.execute())
        found = set()
        for n, page in zip(push_ns, push_pages, strict=True):
            if page:
                above = self._protected_above(page[0][0], next(replies), next(replies))
                found.update(_counted_window(n, n - above, [tag for tag, _ in page], policy))
        for n, members in zip(version_ns, version_pages, strict=True):
            if members:
                found.update(_counted_window(n, n - int(next(replies)), [member_tag(m) for m in members], policy))
        return found

    async def _push_boundary(self, repository: str, policy: RetentionPolicy, n: int) -> list[str]:
        """The counted tags at push ranks [n, n + BOUNDARY_SLACK)."""
        repo = self._keys.repo(repository)

        async def at(rank: int) -> tuple[str, int] | None:
            rows = await self._redis.zrevrange(repo.tags, rank, rank, withscores=True)
            if not rows:
                return None
            tag, score = text(rows[0][0]), int(rows[0][1])
            async with self._redis.pipeline(transaction=False) as pipe:
                self._queue_protected_above(pipe, repo, score)
                count, ties = await pipe.execute()
            return tag, self._protected_above(tag, count, ties)

        async def page(rank: int, count: int) -> list[str]:
            return [text(t) for t in await self._redis.zrevrange(repo.tags, rank, rank + count - 1)]

        return await _boundary(n, at, page, lambda tag: not policy.is_protected(tag))

    async def _version_boundary(self, repository: str, policy: RetentionPolicy, n: int) -> list[str]:
        """The counted version tags at version ranks [n, n + BOUNDARY_SLACK)."""
        repo = self._keys.repo(repository)

        async def at(rank: int) -> tuple[str, int] | None:
            rows = await self._redis.zrevrange(repo.versions, rank, rank)
            if not rows:
                return None
            member = text(rows[0])
            above = await self._redis.zlexcount(repo.retention_protected_versions, f"({member}", "+")
            return member_tag(member), int(above)

        async def page(rank: int, count: int) -> list[str]:
            rows: list[bytes] = await self._redis.zrevrange(repo.versions, rank, rank + count - 1)  # type: ignore[assignment]
            return [member_tag(m) for m in rows]

        return await _boundary(n, at, page, lambda tag: not policy.is_protected(tag))

    async def _facts(self, repository: str, policy: RetentionPolicy, names: Sequence[str]) -> dict[str, TagFacts]:
        """The facts of the live tags among ``names``: O(log n) each, in two round trips."""
        repo = self._keys.repo(repository)
        infos = await self._index.get_tags(repository, list(names))
        tags = [infos[n] for n in names if n in infos]
        counted = [t for t in tags if not policy.is_protected(t.tag)]
        members = {t.tag: version_member(t.tag) for t in counted}
        subjects = {t.tag: s for t in tags if (s := referrer_subject(t.tag)) is not None}
        per_tag = 5
        async with self._redis.pipeline(transaction=False) as pipe:
            for t in counted:
                pipe.zrevrank(repo.tags, t.tag)
                self._queue_protected_above(pipe, repo, t.pushed_at_us)
                member = members[t.tag]
                if member:
                    pipe.zrevrank(repo.versions, member)
                    pipe.zlexcount(repo.retention_protected_versions, f"({member}", "+")
                else:
                    pipe.echo("")
                    pipe.echo("")
            if subjects:
                pipe.zmscore(repo.manifests, list(subjects.values()))
            replies = await pipe.execute()
        live_subjects = replies[per_tag * len(counted)] if subjects else []
        ranks: dict[str, tuple[int | None, int | None]] = {}
        missing_versions: list[str] = []
        for i, t in enumerate(counted):
            push_rank, count, ties, version_rank, above = replies[per_tag * i : per_tag * i + per_tag]
            if members[t.tag] and version_rank is None:
                missing_versions.append(t.tag)
            ranks[t.tag] = (
                None if push_rank is None else int(push_rank) - self._protected_above(t.tag, count, ties),
                None if not members[t.tag] or version_rank is None else int(version_rank) - int(above),
            )
        if missing_versions:
            # A live version tag the version index has not seen (its event's listener has not run yet):
            # add it and judge again rather than judge it without its version.
            await self._versions.sync(repository, missing_versions)
            return await self._facts(repository, policy, names)
        subject_live = dict(zip(subjects, (s is not None for s in live_subjects), strict=True))
        return {
            t.tag: TagFacts(
                t.tag, t.digest, t.pushed_at_us, t.last_pulled_at_us, *ranks.get(t.tag, (None, None)),
                subject_live=subject_live.get(t.tag, False),
            )
            for t in tags
        }

    async def _digest_context(self, repository: str, digests: Iterable[str]) -> dict[str, tuple[list[str], list[str]]]:
        """For each digest: its live tags and the live indexes that list it."""
        repo = self._keys.repo(repository)
        digests = sorted(set(digests))
        async with self._redis.pipeline(transaction=False) as pipe:
            for digest in digests:
                pipe.zrangebylex(repo.digest_tags, f"[{digest} ", f"({digest}!")
                pipe.zrangebylex(repo.parents, f"[{digest} ", f"({digest}!")
            replies = await pipe.execute()
        tags = {d: [text(m).split(" ", 1)[1] for m in replies[2 * i]] for i, d in enumerate(digests)}
        candidates = {d: [text(m).split(" ", 1)[1] for m in replies[2 * i + 1]] for i, d in enumerate(digests)}
        every = sorted({p for ps in candidates.values() for p in ps})
        live: set[str] = set()
        if every:
            scores = await self._redis.zmscore(repo.manifests, every)
            live = {p for p, s in zip(every, scores, strict=True) if s is not None}
        return {d: (tags[d], [p for p in candidates[d] if p in live]) for d in digests}

    async def _decide(self, repository: str, policy: RetentionPolicy, names: Sequence[str]) -> list[TagDecision]:
        """Plan the live tags among ``names`` exactly as the full plan would."""
        if not names:
            return []
        now_us = self._now_us()
        facts = await self._facts(repository, policy, names)
        verdicts = {tag: judge_tag(f, policy, now_us) for tag, f in facts.items()}
        expired = [f for tag, f in facts.items() if not verdicts[tag].keep]
        can_delete_tags = bool(expired) and await self.can_delete_tags(repository)
        context: dict[str, tuple[list[str], list[str]]] = {}
        if expired and not can_delete_tags:
            context = await self._digest_context(repository, (f.digest for f in expired))
            others = sorted({t for tags, _ in context.values() for t in tags} - facts.keys())
            for tag, f in (await self._facts(repository, policy, others)).items():
                facts[tag], verdicts[tag] = f, judge_tag(f, policy, now_us)
        decisions = []
        for tag in names:
            if tag not in facts:
                continue
            f = facts[tag]
            siblings, parents = context.get(f.digest, ([], []))
            sibling_verdicts = [(s, verdicts[s]) for s in siblings if s != tag and s in verdicts]
            decisions.append(decide_tag(repository, f, verdicts[tag], sibling_verdicts, parents, can_delete_tags))
        return decisions

    # -- acting on decisions --------------------------------------------------------------------

    async def _act(
        self,
        repository: str,
        policy: RetentionPolicy,
        decisions: Sequence[TagDecision],
        manifests: Sequence[ManifestDecision],
        *,
        full: bool = False,
    ) -> list[Deletion]:
        """Record (dry run) or queue (enforced) the deletions among ``decisions``; returns the queued ones."""
        deletions = Plan(repository, policy.dry_run, list(decisions), list(manifests)).deletions()
        kept = [d for d in decisions if d.keep]
        if not policy.dry_run and self._tag_deletes is None and repository not in self._warned_no_registry:
            self._warned_no_registry.add(repository)
            log.warning("retention policy enforces deletions but no registry is configured: planning only",
                        extra={"repository": repository})
        if policy.dry_run or self._tag_deletes is None:
            await self._record_dry_run(repository, deletions, kept, full=full)
            return []
        if full:  # planned under an earlier dry run: that plan is over
            await self._redis.delete(self._keys.repo(repository).retention_dry_run)
        queued = await self._queue.enqueue(repository, deletions, policy.max_deletions_per_run)
        for deletion in queued:
            log.info("retention deletion queued", extra={"repository": repository, "claim": deletion.claim,
                                                         "rule": deletion.rule})
        return queued

    async def _record_dry_run(
        self, repository: str, deletions: Sequence[Deletion], kept: Sequence[TagDecision], *, full: bool
    ) -> None:
        """Count each planned deletion once while it stays planned; forget it when it is kept again."""
        key = self._keys.repo(repository).retention_dry_run
        planned = {d.claim: d.digest for d in deletions}
        stale: set[str] = {f"t:{d.tag}" for d in kept} | {f"m:{d.digest}" for d in kept}
        if full:
            stale |= {text(f) for f in await self._redis.hkeys(key)} - planned.keys()
        async with self._redis.pipeline(transaction=True) as pipe:
            if stale - planned.keys():
                pipe.hdel(key, *sorted(stale - planned.keys()))
            for claim, digest in planned.items():
                pipe.hsetnx(key, claim, digest)
            replies = await pipe.execute()
        new = sum(1 for r in replies[-len(planned):] if r) if planned else 0
        if new:
            self._metrics.retention_deletions.labels("dry_run").inc(new)
            log.info("retention dry run planned deletions", extra={"repository": repository, "count": new})

    # -- full plans and the sweep ---------------------------------------------------------------

    async def plan(self, repository: str) -> Plan | None:
        """The full plan of a repository (every tag), or None when no retention policy applies."""
        policy = self.policy(repository)
        if policy is None:
            return None
        return await self._full_plan(repository, policy)

    async def _full_plan(
        self, repository: str, policy: RetentionPolicy, snapshot: tuple[list[TagInfo], list[ManifestInfo]] | None = None
    ) -> Plan:
        repo = self._keys.repo(repository)
        tags, manifests = snapshot or (
            await self._index.list_tags(repository), await self._index.list_manifests(repository)
        )
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(repo.untagged_since, 0, -1, withscores=True)
            pipe.hgetall(repo.subjects)
            since_rows, subject_rows = await pipe.execute()
        return build_plan(
            repository, policy, tags, manifests,
            untagged_since={text(d): int(s) for d, s in since_rows},
            subjects={text(d): text(s) for d, s in subject_rows.items() if s},
            now_us=self._now_us(),
            can_delete_tags=await self.can_delete_tags(repository),
        )

    async def sweep_repository(self, repository: str) -> Plan | None:
        """Repair the derived sets of one repository, plan it in full, and act on the plan."""
        policy = self.policy(repository)
        if policy is None:
            return None
        tags = await self._index.list_tags(repository)
        manifests = await self._index.list_manifests(repository)
        await self._repair(repository, policy, tags, manifests)
        plan = await self._full_plan(repository, policy, (tags, manifests))
        await self._act(repository, policy, plan.tags, plan.untagged, full=True)
        return plan

    async def _repair(
        self, repository: str, policy: RetentionPolicy, tags: Sequence[TagInfo], manifests: Sequence[ManifestInfo]
    ) -> None:
        """Bring the derived sets back in line with the index (after lost events or a policy change)."""
        repo = self._keys.repo(repository)
        await self._versions.rebuild(repository)
        await self._rebuild_protected(repository, policy)
        await self._redis.hset(repo.retention_meta, "protected", protected_fingerprint(policy))
        live = {m.digest for m in manifests}
        untagged = {m.digest for m in manifests if not m.tags}
        edges = {
            f"{child} {m.digest}" for m in manifests if lists_children(m.media_type) for child in m.references
        }
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrange(repo.untagged_since, 0, -1)
            pipe.zrange(repo.parents, 0, -1)
            pipe.hkeys(repo.subjects)
            since_raw, edges_raw, subjects_raw = await pipe.execute()
        now_us = self._now_us()
        stale_since = {text(d) for d in since_raw} - untagged
        stale_edges = {text(e) for e in edges_raw} - edges
        stale_subjects = {text(d) for d in subjects_raw} - live
        async with self._redis.pipeline(transaction=False) as pipe:
            if untagged:
                # A manifest untagged without an event saying so (a moved tag): its grace starts now.
                pipe.zadd(repo.untagged_since, dict.fromkeys(untagged, now_us), nx=True)
            if stale_since:
                pipe.zrem(repo.untagged_since, *stale_since)
            if edges:
                pipe.zadd(repo.parents, dict.fromkeys(edges, 0))
            if stale_edges:
                pipe.zrem(repo.parents, *stale_edges)
            if stale_subjects:
                pipe.hdel(repo.subjects, *stale_subjects)
            await pipe.execute()

    async def resync(self, repository: str) -> None:
        """After reconciliation repaired the index: repair the derived sets and act on the full plan."""
        await self.sweep_repository(repository)

    async def sweep(self, batch: int = 200) -> int:
        """Sweep every repository that has a retention policy; returns how many were swept."""
        swept = 0
        last: str | None = None
        while True:
            names = await self._index.list_repositories(batch, last)
            if not names:
                return swept
            for name in names:
                if self.policy(name) is not None:
                    await self.sweep_repository(name)
                    swept += 1
            last = names[-1]

    # -- for the deletion worker ---------------------------------------------------------------

    async def confirm(self, deletion: Deletion) -> Deletion | None:
        """The deletion as the plan has it now, or None when it is no longer planned."""
        policy = self.policy(deletion.repository)
        if policy is None or policy.dry_run:
            return None
        repository = deletion.repository
        await self._ensure_protected(repository, policy)
        await self._sync_newest_protected(repository, policy)
        await self._clean_windows(repository, policy)
        if deletion.action is Action.TAG and deletion.tag is not None:
            # The tag's plan now, whatever digest it points at now (the registry is checked before deleting).
            decisions = await self._decide(repository, policy, [deletion.tag])
            return decisions[0].deletion if decisions else None
        context = await self._digest_context(repository, [deletion.digest])
        tags, _ = context[deletion.digest]
        if tags:
            found = [d.deletion for d in await self._decide(repository, policy, sorted(tags))]
            if all(d is not None and d.action is Action.DIGEST for d in found):
                return found[0]
            return None
        return await self._confirm_untagged(repository, policy, deletion.digest)

    async def _sync_newest_protected(self, repository: str, policy: RetentionPolicy) -> None:
        """Bring the protected sets up to date for the newest pushes before a deletion is confirmed.

        Another replica may have indexed the push of a protected tag whose listener has not synced the sets
        yet: left uncounted it would shift every rank below it by one and put a tag the windows keep in their
        deletion zone. Such a tag is among the newest pushes; the sync is idempotent and checks the index.
        """
        if not any(isinstance(r, KeepLastPushed | KeepSemverLatest) for r in policy.keep):
            return  # only the count rules rank tags
        await self._sync_protected(repository, policy, await self._index.newest_tags(repository, _LAGGING_PUSHES))

    async def _confirm_untagged(self, repository: str, policy: RetentionPolicy, digest: str) -> Deletion | None:
        repo = self._keys.repo(repository)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(repo.manifests, digest)
            pipe.zscore(repo.untagged_since, digest)
            pipe.hget(repo.subjects, digest)
            live, since, subject = await pipe.execute()
        if live is None or since is None:
            return None  # gone, or not yet seen untagged by an event or the sweep
        _, parents = (await self._digest_context(repository, [digest]))[digest]
        live_subject = None
        if subject:
            subject_digest = text(subject)
            if await self._redis.zscore(repo.manifests, subject_digest) is not None:
                live_subject = subject_digest
        # O(n), but only before a DELETE (rate-limited): the one moment the answer must be right.
        manifests = await self._index.list_manifests(repository)
        media_type = next((m.media_type for m in manifests if m.digest == digest), None)
        unlisted = [] if lists_children(media_type) else unlisted_indexes(manifests)
        decision = decide_untagged(repository, digest, int(since), parents, live_subject, policy, self._now_us(),
                                   unlisted[0] if unlisted else None)
        return decision.deletion

    async def _clean_windows(self, repository: str, policy: RetentionPolicy) -> None:
        """Drop members of the version and protected sets whose tag is gone, in and above the count windows.

        The sets follow the tag index through events; a lost delete event leaves a member behind, which
        would push a kept tag down the window. Before a real deletion, the members that can matter are checked.
        """
        repo = self._keys.repo(repository)
        protected = [text(t) for t in await self._redis.zrange(repo.retention_protected, 0, -1)]
        depth = max((r.semver_latest for r in policy.keep if isinstance(r, KeepSemverLatest)), default=0)
        while True:
            top = await self._versions.highest(repository, depth + len(protected) + BOUNDARY_SLACK) if depth else []
            names = sorted(set(top) | set(protected))
            if not names:
                return
            scores = await self._redis.zmscore(repo.tags, names)
            gone = [n for n, s in zip(names, scores, strict=True) if s is None]
            if not gone:
                return
            await self._versions.sync(repository, gone)
            await self._sync_protected(repository, policy, gone)
            protected = [p for p in protected if p not in gone]

    async def note_subject(self, repository: str, digest: str, subject: str) -> bool:
        """Remember what manifest ``digest`` refers to ('' for nothing); True when that subject is live."""
        repo = self._keys.repo(repository)
        await self._redis.hset(repo.subjects, digest, subject)
        return bool(subject) and await self._redis.zscore(repo.manifests, subject) is not None


def _counted_window(n: int, first_rank: int, page: Sequence[str], policy: RetentionPolicy) -> list[str]:
    """The counted tags of ``page`` at counted ranks [n, n + BOUNDARY_SLACK), given the counted rank the
    first counted tag of the page has."""
    rank = first_rank
    window = []
    for tag in page:
        if policy.is_protected(tag):
            continue
        if n <= rank < n + BOUNDARY_SLACK:
            window.append(tag)
        rank += 1
    return window


async def _boundary(
    n: int,
    at: Callable[[int], Awaitable[tuple[str, int] | None]],
    page: Callable[[int, int], Awaitable[list[str]]],
    counted: Callable[[str], bool],
) -> list[str]:
    """The counted entries at counted ranks [n, n + BOUNDARY_SLACK) of a sorted set ordered with
    protected entries mixed in.

    ``at(r)`` gives the entry at absolute rank r and how many protected entries rank above it. The first
    counted entry at or below absolute rank r has counted rank ``r - above``; move down until that is n.
    """
    rank = n
    while True:
        found = await at(rank)
        if found is None:
            return []
        _, above = found
        if rank - above >= n:
            break
        rank = n + above
    names: list[str] = []
    while len(names) < BOUNDARY_SLACK:
        rows = await page(rank, 2 * BOUNDARY_SLACK)
        if not rows:
            break
        names += [tag for tag in rows if counted(tag)]
        rank += len(rows)
    return names[:BOUNDARY_SLACK]

