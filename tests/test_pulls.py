"""Pulls that are not use (scanners, the consumer's own reads) do not move ``last_pulled_at``."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from consumer import __version__
from consumer.app import create_app
from consumer.envelope import Change, ChangeKind
from consumer.metrics import Metrics
from consumer.pulls import PullFilter
from consumer.registry_client import RegistryClient
from consumer.settings import Settings, load_settings
from tests.conftest import load_envelopes

V1 = "application/vnd.docker.distribution.events.v1+json"


def _change(kind: ChangeKind, user_agent: str | None, actor: str | None = "ci-bot") -> Change:
    return Change(kind=kind, action=kind.value, event_id="e", repository="team/app", timestamp_us=1, tag="1.0",
                  digest="sha256:" + "a" * 64, user_agent=user_agent, actor=actor)


@pytest.mark.parametrize(
    ("kind", "user_agent", "actor", "ignored"),
    [
        (ChangeKind.PULL, f"registry-consumer/{__version__}", "svc", True),  # the consumer's own read
        (ChangeKind.PULL, "registry-consumer-fork/1.0", "svc", False),
        (ChangeKind.PULL, "Trivy/0.50.1", "ci-bot", True),
        (ChangeKind.PULL, "containerd/1.7", "scanner-prod", True),
        (ChangeKind.PULL, "containerd/1.7", "ci-bot", False),
        (ChangeKind.PULL, None, None, False),
        (ChangeKind.PULL, "Trivy", "ci-bot", False),  # globs match the whole text
        (ChangeKind.TAG_PUSH, "Trivy/0.50.1", "scanner-prod", False),  # only pulls are filtered
    ],
)
def test_ignored_user_agents_and_actors(kind: ChangeKind, user_agent: str | None, actor: str | None,
                                        ignored: bool) -> None:
    settings = load_settings(None, ignore_pulls={"user_agents": ["Trivy/*"], "actors": ["scanner-*"]})
    pulls = PullFilter.for_settings(settings)
    change = _change(kind, user_agent, actor)
    assert pulls.ignores(change) is ignored
    assert pulls.apply(change).kind is (ChangeKind.IGNORED if ignored else kind)


async def test_the_consumers_own_user_agent_follows_its_registry_settings() -> None:
    settings = load_settings(None, registry={"url": "http://127.0.0.1:5000", "user_agent": "rc-prod"})
    assert settings.registry is not None
    pulls = PullFilter.for_settings(settings)
    async with RegistryClient.open(settings.registry) as client:  # what its requests really carry
        assert pulls.ignores(_change(ChangeKind.PULL, client.user_agent))
    assert not pulls.ignores(_change(ChangeKind.PULL, f"registry-consumer/{__version__}"))


async def test_a_scanners_pull_is_counted_ignored_and_leaves_last_pulled_at(
    aiohttp_client: Callable[..., Any], make_settings: Callable[..., Settings], auth_headers: dict[str, str]
) -> None:
    metrics = Metrics(process=False)
    client = await aiohttp_client(create_app(make_settings(ignore_pulls={"user_agents": ["Trivy/*"]}),
                                             metrics=metrics))
    push = load_envelopes("distribution-2.8.2/01-push-oci-single-arch-tag")[-1]["body"]
    pull = load_envelopes("distribution-2.8.2/07-pull-by-tag")[0]["body"]
    assert pull["events"][0]["action"] == "pull" and pull["events"][0]["target"].get("tag") == "1.0"
    scanned = copy.deepcopy(pull)
    scanned["events"][0]["id"] += "-scan"
    scanned["events"][0]["request"]["useragent"] = "Trivy/0.50.1"

    async def send(body: dict[str, Any]) -> dict[str, int]:
        resp = await client.post("/v1/events", data=json.dumps(body), headers={**auth_headers, "Content-Type": V1})
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]

    async def last_pulled() -> str | None:
        tags = await (await client.get("/v1/repositories/myapp1/tags", headers=auth_headers)).json()
        return next(t["last_pulled_at"] for t in tags["tags"] if t["tag"] == "1.0")  # type: ignore[no-any-return]

    await send(push)
    assert (await send(scanned))["ignored"] == 1
    assert await last_pulled() is None
    assert (await send(scanned))["duplicate"] == 1  # deduplicated like any event
    assert (await send(pull))["applied"] == 1
    assert await last_pulled() is not None
    sample = metrics.registry.get_sample_value
    assert sample("registry_consumer_events_total", {"action": "pull", "outcome": "ignored"}) == 1
