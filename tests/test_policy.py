"""The ``registry:`` and ``policies:`` configuration: shape, validation errors that name the policy, selection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consumer.errors import ConfigError
from consumer.policy import (
    KeepLastPushed,
    KeepPulledWithin,
    KeepPushedWithin,
    KeepSemverLatest,
    KeepTags,
    Policy,
    PolicySet,
    TagPattern,
    specificity,
)
from consumer.settings import load_settings

ISSUE_EXAMPLE = """
registry: {url: http://127.0.0.1:5000, username: ci, password_file: PASSWORD_FILE}
policies:
  - repositories: ["team/*"]
    latest: {mode: highest-semver, action: fix, include_prereleases: false}
    retention:
      dry_run: true
      keep:
        - last_pushed: 10
        - pushed_within: 30d
        - pulled_within: 14d
        - semver_latest: 5
        - tags: ['^v?\\d+\\.\\d+\\.\\d+$', 'release-*']
      protected: [latest, stable]
      untagged: {delete_after: 24h}
      max_deletions_per_run: 20
    on_unexpected_deletion: {revoke_actor: false}
  - repositories: ["*"]
"""


def _load(tmp_path: Path, text: str) -> Any:
    password = tmp_path / "password"
    password.write_text("hunter2\n")
    path = tmp_path / "consumer.yaml"
    path.write_text(text.replace("PASSWORD_FILE", str(password)))
    return load_settings(path)


def test_the_issue_example_loads(tmp_path: Path) -> None:
    settings = _load(tmp_path, ISSUE_EXAMPLE)
    assert settings.registry.url == "http://127.0.0.1:5000"
    assert settings.registry.password_text() == "hunter2"
    team, default = settings.policies
    assert team.latest.mode == "highest-semver" and team.latest.action == "fix"
    retention = team.retention
    assert retention.dry_run is True and retention.max_deletions_per_run == 20
    assert retention.untagged.delete_after_seconds == 86_400
    rules = retention.keep
    assert [type(r) for r in rules] == [KeepLastPushed, KeepPushedWithin, KeepPulledWithin, KeepSemverLatest, KeepTags]
    assert [r.rule for r in rules] == ["last_pushed", "pushed_within", "pulled_within", "semver_latest", "tags"]
    assert rules[1].pushed_within_seconds == 30 * 86_400
    assert rules[2].pulled_within_seconds == 14 * 86_400
    assert rules[4].matching("v1.2.3") == r"^v?\d+\.\d+\.\d+$"
    assert rules[4].matching("release-7") == "release-*"
    assert rules[4].matching("v1.2") is None
    assert team.is_protected("stable") and team.is_protected("latest") and not team.is_protected("v1.2.3")
    assert default.latest is None and default.retention is None and default.is_protected("latest")
    assert team.on_unexpected_deletion.revoke_actor is False


def test_retention_defaults_to_dry_run() -> None:
    policy = Policy.model_validate({"repositories": ["a"], "retention": {"keep": [{"last_pushed": 1}]}})
    assert policy.retention is not None and policy.retention.dry_run is True


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            {"repositories": ["team/*"], "retention": {"keep": [{"last_pushed": 0}]}},
            "policies[1] (team/*): retention.keep[0].last_pushed: Input should be greater than or equal to 1",
        ),
        (
            {"repositories": ["team/*"], "retention": {"keep": [{"last_pushed": 1, "tags": ["x"]}]}},
            "policies[1] (team/*): retention.keep[0]: Value error, each keep rule is a mapping with one key",
        ),
        (
            {"repositories": ["a", "b"], "retention": {"keep": [{"kept_forever": 1}]}},
            "policies[1] (a, b): retention.keep[0]: Value error, each keep rule is a mapping with one key",
        ),
        (
            {"repositories": ["a"], "retention": {"keep": [{"tags": ["^("]}]}},
            "policies[1] (a): retention.keep[0].tags[0]: Value error, invalid regular expression '^('",
        ),
        (
            {"repositories": ["a"], "retention": {"keep": [{"tags": ["a b"]}]}},
            "policies[1] (a): retention.keep[0].tags[0]: Value error, invalid tag glob",
        ),
        (
            {"repositories": ["a"], "retention": {"keep": [{"pushed_within": "3 years"}]}},
            "policies[1] (a): retention.keep[0].pushed_within: Value error, invalid duration",
        ),
        (
            {"repositories": ["a"], "retention": {"untagged": {"delete_after": "0s"}}},
            "policies[1] (a): retention.untagged.delete_after: Input should be greater than 0",
        ),
        (
            {"repositories": ["a"], "retention": {"max_deletions_per_run": 0}},
            "policies[1] (a): retention.max_deletions_per_run",
        ),
        ({"repositories": ["a"], "latest": {"mode": "alphabetical"}}, "policies[1] (a): latest.mode: Input should be"),
        (
            {"repositories": ["a"], "latest": {"action": "fix", "colour": "red"}},
            "policies[1] (a): latest.colour: Extra inputs are not permitted",
        ),
        ({"repositories": ["Team/*"]}, "policies[1] (Team/*): repositories: Value error, invalid repository glob"),
        ({"repositories": []}, "policies[1]: repositories: "),
        ({"latest": {"mode": "manual"}}, "policies[1]: repositories: Field required"),
        (
            {"repositories": ["a"], "on_unexpected_deletion": {"revoke_actor": "sometimes"}},
            "policies[1] (a): on_unexpected_deletion.revoke_actor: Input should be a valid boolean",
        ),
    ],
)
def test_errors_name_the_policy_and_the_field(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, policies=[{"repositories": ["z"]}, policy])
    assert info.value.detail.startswith("invalid configuration: " + message), info.value.detail


def test_a_glob_in_two_policies_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"policies: .*'team/\*' is in policies\[0\] and policies\[2\]"):
        load_settings(
            None, policies=[{"repositories": ["team/*"]}, {"repositories": ["x"]}, {"repositories": ["y", "team/*"]}]
        )


def test_registry_section_errors_name_the_field() -> None:
    for registry, field in (
        ({"url": "ftp://x"}, "registry.url"),
        ({"username": "u"}, "registry.url"),
        ({"url": "http://x", "password": "p"}, "registry"),
        ({"url": "http://x", "max_concurrency": 0}, "registry.max_concurrency"),
    ):
        with pytest.raises(ConfigError) as info:
            load_settings(None, registry=registry)
        assert info.value.detail.startswith(f"invalid configuration: {field}"), info.value.detail


def test_registry_url_contract_variable_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_CONSUMER_REGISTRY_URL", "http://10.0.0.9:5000/")
    settings = _load(tmp_path, ISSUE_EXAMPLE)
    assert settings.registry.url == "http://10.0.0.9:5000"
    assert settings.registry.username == "ci"  # the rest of the section still comes from the file
    # Without a registry section in the file, the variable alone configures it.
    assert load_settings(None).registry.url == "http://10.0.0.9:5000"
    # The nested spelling of every other field keeps working.
    monkeypatch.setenv("REGISTRY_CONSUMER_REGISTRY__TIMEOUT_SECONDS", "3")
    assert load_settings(None).registry.timeout_seconds == 3


def test_no_registry_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_CONSUMER_REGISTRY_URL", raising=False)
    settings = load_settings(None)
    assert settings.registry is None and settings.policies == ()


def _policies(*globs: tuple[str, ...]) -> PolicySet:
    return PolicySet([Policy(repositories=g) for g in globs])


def _chosen(policies: PolicySet, repository: str) -> tuple[str, ...] | None:
    policy = policies.policy_for(repository)
    return policy.repositories if policy is not None else None


def test_most_specific_glob_wins() -> None:
    policies = _policies(
        ("*",),
        ("team/*",),
        ("team/api-*",),
        ("team/api-gateway",),
        ("team/*-worker",),
        ("*-worker",),
        ("team/*-*",),
        ("*i",),
        ("*-api",),
    )
    assert _chosen(policies, "team/api-gateway") == ("team/api-gateway",)  # exact name
    assert _chosen(policies, "team/api-web") == ("team/api-*",)  # longer literal prefix
    assert _chosen(policies, "team/db-worker") == ("team/*-worker",)  # same prefix, fewer wildcards
    assert _chosen(policies, "team/db") == ("team/*",)
    assert _chosen(policies, "other/x-worker") == ("*-worker",)
    assert _chosen(policies, "other/x-api") == ("*-api",)  # more literal characters than "*i"
    assert _chosen(policies, "team/sub/deep") == ("team/*",)  # "*" crosses "/"
    assert _chosen(policies, "elsewhere") == ("*",)  # the default


def test_ties_go_to_the_policy_listed_first_and_no_match_is_none() -> None:
    first = _policies(("*x*",), ("*y*",))
    assert _chosen(first, "axyb") == ("*x*",)
    assert _chosen(_policies(("*y*",), ("*x*",)), "axyb") == ("*y*",)
    assert first.policy_for("nothing") is None


def test_a_policy_uses_its_best_glob() -> None:
    policies = _policies(("team/*",), ("*", "team/api"))
    assert _chosen(policies, "team/api") == ("*", "team/api")
    assert _chosen(policies, "team/web") == ("team/*",)


def test_specificity_fields() -> None:
    spec = specificity("team/api-*-v?")
    assert (spec.exact, spec.literal_prefix, spec.wildcards, spec.literal_chars) == (False, 9, 2, 11)
    assert specificity("team/api").exact


def test_question_mark_is_one_character() -> None:
    policies = _policies(("app?",))
    assert _chosen(policies, "app1") == ("app?",)
    assert policies.policy_for("app12") is None and policies.policy_for("app") is None


def test_tag_patterns_regex_versus_glob() -> None:
    assert TagPattern("release-*").matches("release-2024.01") and not TagPattern("release-*").matches("xrelease-1")
    assert TagPattern("v?.*").matches("v1.2") and not TagPattern("v?.*").matches("v12")
    assert TagPattern(r"^v\d+").matches("v12-rc")  # regex searched as written: anchored only at the start
    assert not TagPattern(r"^v\d+$").matches("v12-rc")
    assert TagPattern("^main-").is_regex and not TagPattern("main-*").is_regex
