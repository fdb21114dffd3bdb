"""Property: under random policies and random push/delete sequences, retention never deletes a protected tag,
a tag a keep rule keeps, or a digest a kept tag points at (nor a child of a live index).

Each example drives a real Redis through the tag index and the planner event by event, as the webhook and
its listener do. Queued deletions are confirmed and carried out the way the registry would carry them out
(a tag delete; or a digest delete with one tag-delete event per tag), and every one is checked, at the
moment it is executed, against a plain re-statement of the rules computed from the index. After every event the
full plan (what a dry run reports) is checked the same way, and each per-event decision must equal the full
plan's decision for that tag.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from consumer.deleter import Action, Deletion
from consumer.envelope import ChangeKind
from consumer.index import ManifestInfo, TagInfo, text
from consumer.policy import (
    KeepLastPushed,
    KeepPulledWithin,
    KeepPushedWithin,
    KeepSemverLatest,
    KeepTags,
    RetentionPolicy,
    matches_any,
)
from consumer.retention import BOUNDARY_SLACK, counted_orders, lists_children
from consumer.semver import parse
from tests.support.retention import OCI_INDEX, REPO, Rig, change, digest_of, make_rig, policy_set

IMAGES = [f"img{i}" for i in range(5)]
INDEXES = ["idx0", "idx1"]
TAGS = ["1.0.0", "v1.0.0", "1.2.0", "1.9.0", "1.10.0", "2.0.0-rc.1", "2.0.0", "v3.1.0", "latest", "stable", "prod-1",
        "release-a", "main", "dev", "feature", "nightly", f"sha256-{digest_of('img0')[7:]}.sig"]

RULE = st.one_of(
    st.integers(1, 4).map(lambda n: {"last_pushed": n}),
    st.integers(1, 4).map(lambda n: {"semver_latest": n}),
    st.sampled_from(["30s", "2m"]).map(lambda d: {"pushed_within": d}),
    st.sampled_from(["30s", "2m"]).map(lambda d: {"pulled_within": d}),
    st.sampled_from([["release-*"], ["^v?\\d+\\.0\\.0$"], ["ma*", "^dev$"]]).map(lambda p: {"tags": p}),
)
POLICY = st.fixed_dictionaries({
    "dry_run": st.just(False),
    "keep": st.lists(RULE, max_size=4),
    "protected": st.sampled_from([[], ["stable"], ["stable", "prod-*"], ["^1\\.9\\."]]),
    "untagged": st.sampled_from([None, {"delete_after": "1m"}]),
    "max_deletions_per_run": st.integers(1, 5),
}).map(lambda p: {k: v for k, v in p.items() if v is not None})
DT = st.integers(0, 40)
PUSH = st.tuples(st.just("push"), st.sampled_from(TAGS), st.sampled_from(IMAGES), DT)
WAIT = st.tuples(st.just("wait"), st.none(), st.none(), st.integers(1, 200))
DELETE = st.tuples(st.just("delete"), st.none(), st.none(), st.just(0))
# Pushes are most of what registries see; deletions are carried out often so that plans are tested.
OP = st.one_of(
    PUSH, PUSH, PUSH, PUSH, WAIT, DELETE, DELETE,
    st.tuples(st.just("push_index"), st.sampled_from(TAGS), st.sampled_from(INDEXES), DT),
    st.tuples(st.just("push_digest"), st.none(), st.sampled_from(IMAGES), DT),
    st.tuples(st.just("delete_tag"), st.sampled_from(TAGS), st.none(), DT),
    st.tuples(st.just("delete_digest"), st.none(), st.sampled_from(IMAGES + INDEXES), DT),
    st.tuples(st.just("pull"), st.sampled_from(TAGS), st.none(), DT),
    st.tuples(st.just("sweep"), st.none(), st.none(), st.just(0)),
)
_run = itertools.count()


def children(index: str) -> list[str]:
    return [digest_of(f"{index}/amd64"), digest_of(f"{index}/arm64")]


def kept_by_the_rules(policy: RetentionPolicy, tags: list[TagInfo], live: set[str], now_us: int) -> set[str]:
    """The rules of issue 4, stated plainly: what must survive."""
    kept = {t.tag for t in tags if t.tag == "latest" or policy.is_protected(t.tag)}
    counted = [t for t in tags if t.tag not in kept]
    for rule in policy.keep:
        match rule:
            case KeepLastPushed():
                newest = sorted(counted, key=lambda t: (t.pushed_at_us, t.tag.encode()), reverse=True)
                kept |= {t.tag for t in newest[: rule.last_pushed]}
            case KeepSemverLatest():
                versions = sorted(((v, t.tag.encode(), t.tag) for t in counted if (v := parse(t.tag))), reverse=True)
                kept |= {tag for _, _, tag in versions[: rule.semver_latest]}
            case KeepPushedWithin():
                kept |= {t.tag for t in counted if now_us - t.pushed_at_us <= rule.pushed_within_seconds * 10**6}
            case KeepPulledWithin():
                kept |= {t.tag for t in counted
                         if now_us - max(t.last_pulled_at_us or 0, t.pushed_at_us) <= rule.pulled_within_seconds * 10**6}
            case KeepTags():
                kept |= {t.tag for t in counted if matches_any(rule.tags, t.tag)}
    kept |= {t.tag for t in counted if t.tag.startswith("sha256-") and "sha256:" + t.tag[7:71] in live}
    return kept


async def check_deletion(rig: Rig, policy: RetentionPolicy, deletion: Deletion) -> None:
    tags = await rig.index.list_tags(REPO)
    manifests: list[ManifestInfo] = await rig.index.list_manifests(REPO)
    live = {m.digest for m in manifests}
    kept = kept_by_the_rules(policy, tags, live, int(rig.clock() * 10**6))
    if deletion.action is Action.TAG:
        assert deletion.tag not in kept, (deletion, kept)
        return
    on_digest = {t.tag for t in tags if t.digest == deletion.digest}
    assert not on_digest & kept, (deletion, kept)
    parents = [m.digest for m in manifests if lists_children(m.media_type) and deletion.digest in m.references]
    assert not parents, (deletion, parents)
    if not on_digest:
        assert policy.untagged is not None


async def carry_out(rig: Rig, policy: RetentionPolicy, at_s: float) -> int:
    """Play the deletion worker and the registry: confirm, check, delete, send the registry's events."""
    done = 0
    for entry_id, fields in await rig.redis.xrange(rig.keys.retention_queue):
        queued = Deletion.from_fields(fields)
        current = await rig.planner.confirm(queued)
        if current is not None:
            await check_deletion(rig, policy, current)
            if current.action is Action.TAG:
                await rig.apply(change(ChangeKind.TAG_DELETE, at_s=at_s, tag=current.tag))
            else:
                await foreign_digest_delete(rig, current.digest, at_s)
            done += 1
        await rig.redis.xdel(rig.keys.retention_queue, text(entry_id))
        await rig.queue.release(queued)
    return done


async def foreign_digest_delete(rig: Rig, digest: str, at_s: float) -> None:
    """What the registry sends for a digest delete: the manifest's event, then one per tag it removed."""
    tags = [t.tag for t in await rig.index.list_tags(REPO) if t.digest == digest]
    await rig.apply(change(ChangeKind.DIGEST_DELETE, at_s=at_s, digest=digest))
    for tag in tags:
        await rig.apply(change(ChangeKind.TAG_DELETE, at_s=at_s, tag=tag))


async def check_plan(rig: Rig, policy: RetentionPolicy, decisions: list[Any]) -> None:
    """The full plan deletes nothing that must stay (what a dry run reports), and the per-event decisions
    are the full plan's."""
    plan = await rig.planner.plan(REPO)
    assert plan is not None
    for deletion in plan.deletions():
        await check_deletion(rig, policy, deletion)
    full = {d.tag: d for d in plan.tags}
    for decision in decisions:
        assert full[decision.tag] == decision, (decision, full.get(decision.tag))
    # The per-event boundary search finds exactly the counted tags below each window's edge.
    push_rank, version_rank = counted_orders(policy, await rig.index.list_tags(REPO))
    for n in (1, 2, 3):
        for ranks, args in ((push_rank, ([n], [])), (version_rank, ([], [n]))):
            expected = {tag for tag, rank in ranks.items() if n <= rank < n + BOUNDARY_SLACK}
            assert await rig.planner._boundaries(REPO, policy, *args) == expected, (n, args)


async def play(rig: Rig, policy: RetentionPolicy, ops: list[tuple[str, str | None, str | None, int]]) -> None:
    at = 0.0
    for kind, tag, name, dt in ops:
        at = rig.clock.at_s + dt
        decisions: list[Any] = []
        match kind:
            case "push":
                decisions = await rig.push(tag, digest_of(name), at)  # type: ignore[arg-type]
            case "push_index":
                assert name is not None
                for child in children(name):
                    await rig.apply(change(ChangeKind.MANIFEST_PUSH, at_s=at, digest=child))
                decisions = await rig.push(tag, digest_of(name), at, media_type=OCI_INDEX,  # type: ignore[arg-type]
                                           references=children(name))
            case "push_digest":
                await rig.apply(change(ChangeKind.MANIFEST_PUSH, at_s=at, digest=digest_of(name)))  # type: ignore[arg-type]
            case "delete_tag":
                decisions = await rig.apply(change(ChangeKind.TAG_DELETE, at_s=at, tag=tag))
            case "delete_digest":
                await foreign_digest_delete(rig, digest_of(name), at)  # type: ignore[arg-type]
            case "pull":
                current = (await rig.index.get_tags(REPO, [tag])).get(tag)  # type: ignore[list-item]
                if current is not None:
                    await rig.apply(change(ChangeKind.PULL, at_s=at, tag=tag, digest=current.digest))
            case "wait":
                rig.clock.at_s += dt
            case "sweep":
                await rig.planner.sweep()
            case "delete":
                await carry_out(rig, policy, at)
        await check_plan(rig, policy, decisions)
    # Whatever is still planned is carried out too (each sweep queues at most max_deletions_per_run).
    for _ in range(30):
        await rig.planner.sweep()
        if not await rig.queue.depth():
            break
        await carry_out(rig, policy, rig.clock.at_s + 1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    retention=POLICY,
    ops=st.lists(OP, min_size=1, max_size=60),
    tag_deletes=st.booleans(),
)
def test_retention_never_deletes_what_must_stay(redis_url: str, retention: dict[str, Any], ops: Any,
                                               tag_deletes: bool) -> None:
    policies = policy_set(retention)
    policy = policies.policy_for(REPO).retention  # type: ignore[union-attr]
    assert policy is not None
    run = next(_run)

    async def go() -> None:
        async with Redis.from_url(redis_url) as redis:
            rig = make_rig(redis, policies, tag_deletes=tag_deletes, prefix=f"prop{run}")
            await play(rig, policy, ops)
            # The planner and its confirmation agree: once the queue is worked off, nothing is left planned.
            plan = await rig.planner.plan(REPO)
            assert plan is not None
            assert plan.deletions() == []

    asyncio.run(go())
