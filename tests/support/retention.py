"""Building blocks for the retention tests and bench: a planner on a real Redis, events, policies."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from consumer.deleter import DeletionQueue
from consumer.envelope import Change, ChangeKind
from consumer.index import TagIndex
from consumer.metrics import Metrics
from consumer.policy import Policy, PolicySet
from consumer.rediskeys import RedisKeys
from consumer.retention import RetentionPlanner, TagDecision
from consumer.version_index import VersionIndex

REPO = "team/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
# Event clocks start here (seconds); the planner's clock is set relative to it.
EPOCH_S = 1_790_000_000
_ids = itertools.count()

# The scenario: 12 versions (two backports after 2.0.0) and 5 branch tags, latest on 2.0.0.
SCENARIO = ["1.0.0", "1.1.0", "1.2.0", "main", "1.3.0", "1.4.0", "1.5.0", "release-1.x", "1.6.0", "1.7.0",
            "develop", "1.8.0", "2.0.0", "latest", "feature-x", "1.9.0", "1.10.0", "release-2.x"]
SCENARIO_POLICY: dict[str, Any] = {
    "keep": [{"last_pushed": 3}, {"semver_latest": 5}, {"tags": ["release-*"]}],
    "max_deletions_per_run": 50,
}
SCENARIO_RULES = {
    "latest": "latest",
    "release-2.x": "last_pushed:3", "1.10.0": "last_pushed:3", "1.9.0": "last_pushed:3",
    "2.0.0": "semver_latest:5", "1.8.0": "semver_latest:5", "1.7.0": "semver_latest:5",
    "release-1.x": "tags:release-*",
    **{t: "no_keep_rule" for t in ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0", "1.6.0", "main", "develop",
                                   "feature-x"]},
}


def digest_of(name: str) -> str:
    """A stable, valid sha256 digest for an image name used in a test."""
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def policy_set(retention: dict[str, Any], repositories: Sequence[str] = ("team/*",)) -> PolicySet:
    """One policy with the given ``retention:`` section, validated as the config loader would."""
    return PolicySet([Policy.model_validate({"repositories": list(repositories), "retention": retention})])


def change(
    kind: ChangeKind,
    *,
    at_s: float,
    tag: str | None = None,
    digest: str | None = None,
    repository: str = REPO,
    media_type: str | None = OCI_MANIFEST,
    references: Sequence[str] = (),
) -> Change:
    """A change as ``envelope.classify`` makes them; ``at_s`` is seconds after ``EPOCH_S``."""
    action = {ChangeKind.TAG_PUSH: "push", ChangeKind.MANIFEST_PUSH: "push", ChangeKind.PULL: "pull"}.get(kind, "delete")
    return Change(
        kind=kind, action=action, event_id=f"ev-{next(_ids)}", repository=repository,
        timestamp_us=int((EPOCH_S + at_s) * 1_000_000), tag=tag, digest=digest,
        media_type=media_type if action != "delete" else None, references=tuple(references),
    )


@dataclass
class Clock:
    """The planner's clock, in seconds after ``EPOCH_S``."""

    at_s: float = 0.0

    def __call__(self) -> float:
        return EPOCH_S + self.at_s


@dataclass
class Rig:
    """An index and a retention planner on a real Redis, driven event by event."""

    redis: Redis
    keys: RedisKeys
    index: TagIndex
    versions: VersionIndex
    queue: DeletionQueue
    metrics: Metrics
    planner: RetentionPlanner
    clock: Clock
    decisions: list[TagDecision] = field(default_factory=list)

    async def apply(self, change: Change) -> list[TagDecision]:
        """What the webhook and the hook do: index the event, then let retention judge it."""
        self.clock.at_s = max(self.clock.at_s, change.timestamp_us / 1_000_000 - EPOCH_S)
        if not await self.index.apply(change):
            return []
        decisions = await self.planner.evaluate(change)
        self.decisions += decisions
        return decisions

    async def push(self, tag: str, digest: str, at_s: float, **kw: Any) -> list[TagDecision]:
        return await self.apply(change(ChangeKind.TAG_PUSH, at_s=at_s, tag=tag, digest=digest, **kw))


def make_rig(
    redis: Redis,
    policies: PolicySet,
    *,
    tag_deletes: bool | None = False,
    prefix: str = "rt",
    metrics: Metrics | None = None,
    tag_deletes_fn: Callable[[str], Awaitable[bool]] | None = None,
) -> Rig:
    """``tag_deletes``: what the registry can do (True: 3.x, False: 2.x, None: no registry configured)."""
    keys = RedisKeys(prefix)
    index = TagIndex(redis, keys, dedup_ttl_seconds=3600, tombstone_ttl_seconds=3600)
    versions = VersionIndex(redis, keys)
    queue = DeletionQueue(redis, keys, claim_ttl_seconds=3600)
    metrics = metrics or Metrics(process=False)
    clock = Clock()

    async def fixed(_repository: str) -> bool:
        return bool(tag_deletes)

    capability = tag_deletes_fn or (None if tag_deletes is None else fixed)
    planner = RetentionPlanner(redis, keys, index, versions, policies, queue, metrics, capability, clock=clock)
    return Rig(redis, keys, index, versions, queue, metrics, planner, clock)
