"""Retention planning on a real Redis: the rules, the deciding rule per tag, digests, untagged manifests,
and the per-event evaluation agreeing with the full plan."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from consumer.app import create_app
from consumer.deleter import Action, Deletion
from consumer.envelope import ChangeKind
from consumer.metrics import Metrics
from consumer.retention import Plan, TagDecision, build_plan
from consumer.settings import Settings
from tests.policy_events import digest as policy_digest
from tests.policy_events import event, send
from tests.support.retention import (
    EPOCH_S,
    OCI_INDEX,
    REPO,
    SCENARIO,
    SCENARIO_POLICY,
    SCENARIO_RULES,
    Rig,
    change,
    digest_of,
    make_rig,
    policy_set,
)

DAY = 86_400

def image(tag: str) -> str:
    return digest_of("2.0.0" if tag == "latest" else tag)


async def push_scenario(rig: Rig) -> None:
    for second, tag in enumerate(SCENARIO, 1):
        await rig.push(tag, image(tag), second)


async def full_plan(rig: Rig) -> Plan:
    plan = await rig.planner.plan(REPO)
    assert plan is not None
    return plan


def by_tag(plan: Plan) -> dict[str, TagDecision]:
    return {d.tag: d for d in plan.tags}


async def assert_agrees_with_full_plan(rig: Rig, decisions: list[TagDecision]) -> None:
    """Each per-event decision is the decision the full plan makes for that tag at that moment."""
    plan = by_tag(await full_plan(rig))
    for decision in decisions:
        assert plan[decision.tag] == decision, decision.tag


async def test_scenario_plan_names_the_deciding_rule_of_every_tag(redis_client: Redis) -> None:
    rig = make_rig(redis_client, policy_set({**SCENARIO_POLICY, "dry_run": True}))
    for second, tag in enumerate(SCENARIO, 1):
        await assert_agrees_with_full_plan(rig, await rig.push(tag, image(tag), second))
    plan = await full_plan(rig)
    assert plan.dry_run is True
    assert {d.tag: d.rule for d in plan.tags} == SCENARIO_RULES
    deleted = {d.tag for d in plan.tags if not d.keep}
    assert deleted == {t for t, rule in SCENARIO_RULES.items() if rule == "no_keep_rule"}
    # A registry without tag deletes: each expired tag is alone on its digest, so the digest goes.
    assert all(d.deletion is not None and d.deletion.action is Action.DIGEST for d in plan.tags if not d.keep)
    assert by_tag(plan)["1.0.0"].reason == "no keep rule keeps it"
    assert by_tag(plan)["1.8.0"].reason == "#4 highest version"  # 2.0.0 > 1.10.0 > 1.9.0 > 1.8.0


async def test_dry_run_counts_each_planned_deletion_once(redis_client: Redis) -> None:
    metrics = Metrics(process=False)
    rig = make_rig(redis_client, policy_set({**SCENARIO_POLICY, "dry_run": True}), metrics=metrics)
    await push_scenario(rig)
    dry_run = metrics.retention_deletions.labels("dry_run")
    assert dry_run._value.get() == 10
    await rig.planner.sweep()
    await rig.planner.sweep()
    assert dry_run._value.get() == 10
    assert await rig.queue.depth() == 0
    # A planned deletion carried out by someone else leaves the recorded plan.
    planned = rig.keys.repo(REPO).retention_dry_run
    assert await redis_client.hexists(planned, f"m:{image('main')}") == 1
    await rig.apply(change(ChangeKind.DIGEST_DELETE, at_s=100, digest=image("main")))
    assert await redis_client.hexists(planned, f"m:{image('main')}") == 0
    assert await redis_client.hlen(planned) == 9


async def test_protected_tags_are_kept_and_not_counted(redis_client: Redis) -> None:
    policies = policy_set({"keep": [{"last_pushed": 2}, {"semver_latest": 1}], "protected": ["stable", "prod-*", "^9\\."]})
    rig = make_rig(redis_client, policies)
    order = ["a", "stable", "b", "prod-1", "c", "9.0.0", "1.0.0", "prod-2", "d", "2.0.0", "stable"]
    for second, tag in enumerate(order, 1):
        await assert_agrees_with_full_plan(rig, await rig.push(tag, digest_of(f"{tag}{second}"), second))
    plan = by_tag(await full_plan(rig))
    assert {t: d.rule for t, d in plan.items() if d.keep} == {
        "stable": "protected", "prod-1": "protected", "prod-2": "protected", "9.0.0": "protected",
        "2.0.0": "last_pushed:2", "d": "last_pushed:2",
    }
    # 9.0.0 is protected, so it does not take the one semver_latest place: 2.0.0 has it (and is newer anyway).
    assert plan["1.0.0"].rule == "no_keep_rule"


async def test_version_order_is_semver_precedence_with_prereleases(redis_client: Redis) -> None:
    rig = make_rig(redis_client, policy_set({"keep": [{"semver_latest": 3}]}))
    tags = ["2.0.0-rc.1", "1.10.0", "v1.9.0", "2.0.0-rc.2", "1.2.0", "2.0.0-alpha", "snapshot"]
    for second, tag in enumerate(tags, 1):
        await assert_agrees_with_full_plan(rig, await rig.push(tag, digest_of(tag), second))
    kept = {d.tag for d in (await full_plan(rig)).tags if d.keep}
    assert kept == {"2.0.0-rc.2", "2.0.0-rc.1", "2.0.0-alpha"}
    await assert_agrees_with_full_plan(rig, await rig.push("2.0.0", digest_of("2.0.0"), 20))
    kept = {d.tag for d in (await full_plan(rig)).tags if d.keep}
    assert kept == {"2.0.0", "2.0.0-rc.2", "2.0.0-rc.1"}


async def test_time_rules_and_a_never_pulled_tag(redis_client: Redis) -> None:
    rig = make_rig(redis_client, policy_set({"keep": [{"pushed_within": "2d"}, {"pulled_within": "1d"}]}))
    await rig.push("old-pulled", digest_of("a"), 0)
    await rig.push("old", digest_of("b"), 0)
    await rig.push("recent", digest_of("c"), 2 * DAY)
    await rig.apply(change(ChangeKind.PULL, at_s=2 * DAY + 60, tag="old-pulled", digest=digest_of("a")))
    rig.clock.at_s = 2.5 * DAY
    plan = by_tag(await full_plan(rig))
    assert (plan["old"].keep, plan["old"].rule) == (False, "no_keep_rule")
    assert (plan["old-pulled"].rule, plan["recent"].rule) == ("pulled_within:1d", "pushed_within:2d")
    rig.clock.at_s = 4.1 * DAY
    plan = by_tag(await full_plan(rig))
    assert {t for t, d in plan.items() if d.keep} == set()  # pushed 2.1 days ago and never pulled: expired


async def test_shared_digest_is_kept_on_a_registry_without_tag_deletes(redis_client: Redis) -> None:
    policies = policy_set({"keep": [{"tags": ["keep-*"]}, {"last_pushed": 1}]})
    rig = make_rig(redis_client, policies, tag_deletes=False)
    await rig.push("old", digest_of("shared"), 1)
    await rig.push("keep-me", digest_of("shared"), 2)
    await rig.push("alone", digest_of("alone"), 3)
    decisions = await rig.push("newest", digest_of("newest"), 4)
    await assert_agrees_with_full_plan(rig, decisions)
    plan = by_tag(await full_plan(rig))
    assert (plan["old"].keep, plan["old"].rule) == (True, "shared_digest")
    assert plan["old"].reason == "expired, but its digest is also tag keep-me, kept by tags:keep-*"
    assert plan["alone"].deletion is not None and plan["alone"].deletion.action is Action.DIGEST

    # A registry that deletes tags: the expired tag goes by name, the digest stays for keep-me.
    rig3 = make_rig(redis_client, policies, tag_deletes=True, prefix="rt3")
    for second, tag in enumerate(["old", "keep-me"], 1):
        await rig3.push(tag, digest_of("shared"), second)
    await rig3.push("newest", digest_of("newest"), 4)
    old = by_tag(await full_plan(rig3))["old"]
    assert old.deletion is not None and (old.deletion.action, old.deletion.tag) == (Action.TAG, "old")


async def test_index_children_untagged_grace_and_referrers(redis_client: Redis) -> None:
    rig = make_rig(redis_client, policy_set({"keep": [{"last_pushed": 1}], "untagged": {"delete_after": "1h"}}))
    children = [digest_of("amd64"), digest_of("arm64")]
    for child in children:
        await rig.apply(change(ChangeKind.MANIFEST_PUSH, at_s=1, digest=child))
    await rig.push("multi", digest_of("index"), 2, media_type=OCI_INDEX, references=children)
    await rig.apply(change(ChangeKind.MANIFEST_PUSH, at_s=3, digest=digest_of("by-digest")))
    await rig.push(f"sha256-{digest_of('index')[7:]}.sig", digest_of("signature"), 4)
    await rig.push("newer", digest_of("newer"), 5)
    rig.clock.at_s = 2 * 3600
    plan = await full_plan(rig)
    tags = by_tag(plan)
    assert tags["multi"].deletion is not None and tags["multi"].deletion.digest == digest_of("index")
    assert tags[f"sha256-{digest_of('index')[7:]}.sig"].rule == "referrer"
    untagged = {m.digest: m for m in plan.untagged}
    assert {untagged[c].rule for c in children} == {"index_child"}  # children go only after their index
    assert untagged[digest_of("by-digest")].rule == "untagged:1h"
    assert [d.digest for d in plan.deletions()] == [digest_of("index"), digest_of("by-digest")]

    # A manifest left untagged by a moved tag: its grace starts when the sweep first sees it.
    await rig.push("newer", digest_of("newer-2"), 6)
    await rig.planner.sweep()
    moved = {m.digest: m for m in (await full_plan(rig)).untagged}[digest_of("newer")]
    assert (moved.rule, moved.keep) == ("untagged_grace", True)
    rig.clock.at_s += 3601
    moved = {m.digest: m for m in (await full_plan(rig)).untagged}[digest_of("newer")]
    assert moved.deletion is not None and moved.rule == "untagged:1h"


async def test_enforced_evaluation_queues_at_most_max_deletions_per_run_once(redis_client: Redis) -> None:
    rig = make_rig(redis_client, policy_set({"dry_run": False, "keep": [{"last_pushed": 1}],
                                             "max_deletions_per_run": 2}))
    for second in range(1, 8):  # indexed while no listener ran (as after an outage)
        await rig.index.apply(change(ChangeKind.TAG_PUSH, at_s=second, tag=f"t{second}", digest=digest_of(str(second))))
    await rig.planner.sweep()
    assert await rig.queue.depth() == 2
    await rig.planner.sweep()
    assert await rig.queue.depth() == 4  # the two already queued were not queued again
    # Pushing t8 pushes t7 out; the event looks at the few tags below the boundary (t4..t7) and queues the
    # two oldest not yet queued: still at most two per evaluation, oldest first.
    await rig.push("t8", digest_of("8"), 8)
    queued = await redis_client.xrange(rig.keys.retention_queue)
    assert [f[b"digest"].decode() for _, f in queued] == [digest_of(str(i)) for i in (1, 2, 3, 4, 5, 6)]


async def test_nothing_is_queued_without_a_registry(redis_client: Redis) -> None:
    metrics = Metrics(process=False)
    rig = make_rig(redis_client, policy_set({"dry_run": False, "keep": [{"last_pushed": 1}]}), tag_deletes=None,
                   metrics=metrics)
    for second in range(1, 4):
        await rig.push(f"t{second}", digest_of(str(second)), second)
    assert await rig.queue.depth() == 0
    assert metrics.retention_deletions.labels("dry_run")._value.get() == 2


async def test_a_member_left_by_a_lost_delete_event_cannot_get_a_kept_tag_deleted(redis_client: Redis) -> None:
    rig = make_rig(redis_client, policy_set({"dry_run": False, "keep": [{"semver_latest": 3}]}))
    for second, tag in enumerate(["1.0.0", "2.0.0", "3.0.0"], 1):
        await rig.push(tag, digest_of(tag), second)
    # The delete of 3.0.0 reaches the index, but retention never hears of it: its version member stays.
    await rig.index.apply(change(ChangeKind.DIGEST_DELETE, at_s=5, digest=digest_of("3.0.0")))
    # Judged against the stale member, 0.9.0 looks fourth highest and is queued ...
    [decision] = [d for d in await rig.push("0.9.0", digest_of("0.9.0"), 6) if d.tag == "0.9.0"]
    assert decision.deletion is not None
    [(_, fields)] = await redis_client.xrange(rig.keys.retention_queue)
    assert fields[b"digest"].decode() == digest_of("0.9.0")
    # ... but the confirmation before the DELETE drops the stale member and keeps it.
    assert await rig.planner.confirm(decision.deletion) is None
    assert by_tag(await full_plan(rig))["0.9.0"].rule == "semver_latest:3"


async def test_changed_protected_patterns_rebuild_the_protected_sets(redis_client: Redis) -> None:
    rig = make_rig(redis_client, policy_set({"keep": [{"last_pushed": 1}]}))
    for second, tag in enumerate(["a", "b", "c"], 1):
        await rig.push(tag, digest_of(tag), second)
    stricter = make_rig(redis_client, policy_set({"keep": [{"last_pushed": 1}], "protected": ["c"]}))
    decisions = await stricter.push("d", digest_of("d"), 4)
    await assert_agrees_with_full_plan(stricter, decisions)
    assert {d.tag: d.rule for d in (await full_plan(stricter)).tags} == {
        "a": "no_keep_rule", "b": "no_keep_rule", "c": "protected", "d": "last_pushed:1"}


def test_build_plan_is_deterministic_for_equal_push_times() -> None:
    from consumer.index import TagInfo

    policy = policy_set({"keep": [{"last_pushed": 1}]}).policy_for(REPO).retention  # type: ignore[union-attr]
    assert policy is not None
    tags = [TagInfo(t, digest_of(t), None, None, None, None, None, 5) for t in ("a", "b")]
    plan = build_plan(REPO, policy, tags, [], untagged_since={}, subjects={}, now_us=10, can_delete_tags=True)
    assert {d.tag: d.keep for d in plan.tags} == {"a": False, "b": True}  # ties: the greater name ranks first


async def test_the_tag_pushed_out_is_judged_on_the_push_itself(redis_client: Redis) -> None:
    """The boundary search skips protected tags ranked above it (ties included), without waiting for a sweep."""
    rig = make_rig(redis_client, policy_set({"dry_run": False, "keep": [{"last_pushed": 2}, {"semver_latest": 1}],
                                             "protected": ["stable", "prod-*", "^9\\."]}))

    async def queued() -> list[str]:
        return [f[b"tags"].decode() for _, f in await redis_client.xrange(rig.keys.retention_queue)]

    for second, tag in enumerate(["a", "stable", "b", "prod-1"], 1):
        await rig.push(tag, digest_of(tag), second)
    assert await queued() == []
    await rig.push("c", digest_of("c"), 5)
    assert await queued() == ["a"]
    await rig.push("prod-2", digest_of("prod-2"), 6)
    await rig.push("d", digest_of("d"), 6)  # same clock as prod-2, which ranks above it ("prod-2" > "d")
    assert await queued() == ["a", "b"]
    await rig.push("9.0.0", digest_of("9.0.0"), 7)
    await rig.push("1.0.0", digest_of("1.0.0"), 8)
    await rig.push("2.0.0", digest_of("2.0.0"), 9)
    assert await queued() == ["a", "b", "c", "d"]
    await rig.push("e", digest_of("e"), 10)  # 1.0.0: out of last_pushed, and 2.0.0 is the highest counted version
    assert await queued() == ["a", "b", "c", "d", "1.0.0"]


@pytest.mark.parametrize("protected", [4, 40])  # read in one page; searched for (more than _PAGE_PROTECTED)
async def test_boundaries_with_protected_tags_above_them(redis_client: Redis, protected: int) -> None:
    rig = make_rig(redis_client, policy_set({"dry_run": False, "keep": [{"last_pushed": 5}, {"semver_latest": 2}],
                                             "protected": ["p*", "^9\\."]}))
    order = ["a", "b", "c", "d", "e", "f", *(f"p{i}" for i in range(protected)), "1.0.0", "2.0.0", "3.0.0",
             *(f"9.0.{i}" for i in range(protected))]
    for second, tag in enumerate(order, 1):
        await rig.push(tag, digest_of(tag), second)
    decisions = await rig.push("x", digest_of("x"), 1000)  # counted: x 3.0.0 2.0.0 1.0.0 f | e is pushed out
    assert {d.tag for d in decisions if d.deletion is not None} == {"e", "d", "c", "b"}  # BOUNDARY_SLACK of them
    # A new highest version: f leaves last_pushed; 2.0.0 and 1.0.0 leave semver_latest (last_pushed keeps them).
    decisions = await rig.push("4.0.0", digest_of("4.0.0"), 1001)
    assert {d.tag: d.rule for d in decisions} == {
        "4.0.0": "last_pushed:5", "2.0.0": "last_pushed:5", "1.0.0": "last_pushed:5",
        "f": "no_keep_rule", "e": "no_keep_rule", "d": "no_keep_rule", "c": "no_keep_rule"}
    await assert_agrees_with_full_plan(rig, decisions)


async def test_a_protected_tag_with_the_same_push_time_ranks_by_name(redis_client: Redis) -> None:
    policies = policy_set({"dry_run": False, "keep": [{"last_pushed": 1}], "protected": ["p*"]})
    rig = make_rig(redis_client, policies)
    await rig.push("a", digest_of("a"), 0)
    await rig.push("prod", digest_of("prod"), 1)
    decisions = await rig.push("d", digest_of("d"), 1)  # prod ranks above d (same clock, greater name)
    assert [(d.tag, d.keep, d.rule) for d in decisions] == [("a", False, "no_keep_rule"), ("d", True, "last_pushed:1")]
    policy = policies.policy_for(REPO).retention  # type: ignore[union-attr]
    assert policy is not None
    assert await rig.planner._boundaries(REPO, policy, [1], []) == {"a"}  # d is counted first, though second


async def test_the_service_plans_on_events_and_the_api_shows_every_tag(
    aiohttp_client: Callable[..., Any],
    make_settings: Callable[..., Settings],
    make_token: Callable[..., str],
    auth_headers: dict[str, str],
) -> None:
    metrics = Metrics(process=False)
    policies = [{"repositories": ["team/*"], "retention": {"keep": [{"last_pushed": 1}], "protected": ["stable"]}}]
    client = await aiohttp_client(create_app(make_settings(policies=policies), metrics=metrics))
    await send(client, auth_headers, *(event("push", repo, tag=tag, digest=policy_digest(tag))
                                       for repo, tag in [(REPO, "a"), (REPO, "stable"), (REPO, "b"), ("other/x", "c")]))
    resp = await client.get(f"/v1/repositories/{REPO}/retention", headers=auth_headers)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert {k: v for k, v in body.items() if k != "tags"} == {"repository": REPO, "dry_run": True, "untagged": []}
    assert [(t["tag"], t["digest"], t["decision"], t["rule"]) for t in body["tags"]] == [
        ("a", policy_digest("a"), "delete", "no_keep_rule"),
        ("b", policy_digest("b"), "keep", "last_pushed:1"),
        ("stable", policy_digest("stable"), "keep", "protected"),
    ]
    assert metrics.retention_deletions.labels("dry_run")._value.get() == 1  # planned on the push of b
    for path, status in [("other/x", 404), ("nope/nope", 404)]:
        resp = await client.get(f"/v1/repositories/{path}/retention", headers=auth_headers)
        assert resp.status == status, await resp.text()
    resp = await client.get(f"/v1/repositories/{REPO}/retention",
                            headers={"Authorization": f"Bearer {make_token(scope='events:write')}"})
    assert resp.status == 403


async def test_a_full_listener_backlog_resyncs_the_repository_to_the_same_plan(
    aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings], auth_headers: dict[str, str]
) -> None:
    """Above listener_backlog_max_events the planner gets one resync instead of each event: same outcome."""
    import asyncio

    from consumer.appkeys import HOOKS

    metrics = Metrics(process=False)
    policies = [{"repositories": ["team/*"], "retention": {"keep": [{"last_pushed": 1}]}}]
    app = create_app(make_settings(policies=policies, listener_backlog_max_events=1), metrics=metrics)
    client = await aiohttp_client(app)
    release = asyncio.Event()

    async def stuck(change: Any) -> None:  # keeps the backlog full (a listener without resync keeps every event)
        await release.wait()

    await send(client, auth_headers, event("push", REPO, tag="a", digest=policy_digest("a")))  # judged as itself
    app[HOOKS].subscribe(stuck)
    tags = ["b", "c", "d", "e", "f"]
    resp = await client.post("/v1/events", json={"events": [event("push", REPO, tag=t, digest=policy_digest(t))
                                                            for t in tags]},
                             headers={**auth_headers, "Content-Type": "application/vnd.docker.distribution.events.v1+json"})
    assert (await resp.json())["applied"] == len(tags)
    release.set()
    await app[HOOKS].drain(30)
    # The burst's first push was queued as itself; the other four were replaced by one resync of the repository.
    assert metrics.listener_overflow._value.get() == len(tags) - 1
    assert metrics.retention_deletions.labels("dry_run")._value.get() == 5  # a to e planned, once each
    body = await (await client.get(f"/v1/repositories/{REPO}/retention", headers=auth_headers)).json()
    assert [(t["tag"], t["decision"]) for t in body["tags"]] == [
        ("a", "delete"), ("b", "delete"), ("c", "delete"), ("d", "delete"), ("e", "delete"), ("f", "keep")]
    assert app[HOOKS].pending == 0


async def test_confirm_counts_a_protected_tag_another_replica_has_not_synced_yet(redis_client: Redis) -> None:
    rig = make_rig(redis_client, policy_set({"dry_run": False, "keep": [{"last_pushed": 2}], "protected": ["stable"]}))
    for second, tag in enumerate(["a", "b", "c"], 1):
        await rig.push(tag, digest_of(tag), second)
    # Another replica indexed the push of stable; its listener has not synced the protected sets yet.
    await rig.index.apply(change(ChangeKind.TAG_PUSH, at_s=4, tag="stable", digest=digest_of("stable")))
    # This replica judges the push of d: with stable counted, c looks third and is queued ...
    [decision] = [d for d in await rig.push("d", digest_of("d"), 5) if d.tag == "c"]
    assert decision.deletion is not None
    # ... but c is the second most recent unprotected tag: the confirmation before the DELETE keeps it.
    assert await rig.planner.confirm(decision.deletion) is None
    assert by_tag(await full_plan(rig))["c"].rule == "last_pushed:2"


async def test_a_manifest_pushed_again_by_digest_starts_its_untagged_grace_again(redis_client: Redis) -> None:
    rig = make_rig(redis_client, policy_set({"keep": [{"last_pushed": 1}]}))
    child = digest_of("child")
    await rig.apply(change(ChangeKind.MANIFEST_PUSH, at_s=1, digest=child))
    await rig.apply(change(ChangeKind.MANIFEST_PUSH, at_s=7200, digest=child))  # part of a new multi-arch push
    since = await redis_client.zscore(rig.keys.repo(REPO).untagged_since, child)
    assert since == (EPOCH_S + 7200) * 1_000_000


async def test_untagged_manifests_stay_while_a_live_index_has_no_recorded_children(redis_client: Redis) -> None:
    """An index whose push event was lost is known only by digest (reconciliation's HEAD): its children, pushed
    by digest, look like any untagged manifest; none goes until the index's children are known."""
    rig = make_rig(redis_client, policy_set({"dry_run": False, "keep": [{"last_pushed": 1}],
                                             "untagged": {"delete_after": "1h"}}), tag_deletes=True)
    children = [digest_of("amd64"), digest_of("arm64")]
    for child in children:
        await rig.apply(change(ChangeKind.MANIFEST_PUSH, at_s=1, digest=child))
    await rig.push("multi", digest_of("index"), 2, media_type=OCI_INDEX)  # no references recorded
    rig.clock.at_s = 2 * 3600
    untagged = {m.digest: m for m in (await full_plan(rig)).untagged}
    assert {untagged[c].rule for c in children} == {"index_children_unknown"}
    assert all(untagged[c].keep for c in children)
    deletion = Deletion(REPO, Action.DIGEST, children[0], rule="untagged:1h", reason="queued before")
    assert await rig.planner.confirm(deletion) is None  # nor at the last check before a DELETE
    # Once the index's children are known (its push redelivered with references), they are its children.
    await rig.push("multi", digest_of("index"), 3, media_type=OCI_INDEX, references=children)
    assert {m.digest: m.rule for m in (await full_plan(rig)).untagged}[children[0]] == "index_child"


async def test_untagged_indexes_with_unknown_children_do_not_hold_each_other_back(redis_client: Redis) -> None:
    rig = make_rig(redis_client, policy_set({"keep": [{"last_pushed": 1}], "untagged": {"delete_after": "1h"}}),
                   tag_deletes=True)
    for name in ("index-a", "index-b"):  # pushed by digest, their children never recorded
        await rig.apply(change(ChangeKind.MANIFEST_PUSH, at_s=1, digest=digest_of(name), media_type=OCI_INDEX))
    await rig.apply(change(ChangeKind.MANIFEST_PUSH, at_s=1, digest=digest_of("child")))
    rig.clock.at_s = 2 * 3600
    rules = {m.digest: m.rule for m in (await full_plan(rig)).untagged}
    assert rules[digest_of("index-a")] == rules[digest_of("index-b")] == "untagged:1h"  # both may go
    assert rules[digest_of("child")] == "index_children_unknown"  # the manifest that may be a child stays
