"""The envelope at the edge: the one-pass path and the event-by-event path must read every shape alike."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from consumer.envelope import ChangeKind, parse_envelope, parse_event
from tests.conftest import all_scenarios, load_envelopes


@pytest.mark.parametrize("scenario", all_scenarios())
def test_both_paths_give_the_same_changes_for_every_recorded_envelope(scenario: str) -> None:
    for recorded in load_envelopes(scenario):
        body: dict[str, Any] = recorded["body"]
        one_pass = parse_envelope(json.dumps(body).encode())
        assert one_pass is not None, f"{scenario}: a recorded envelope must pass as a whole"
        assert one_pass == [parse_event(event) for event in body["events"]]


def test_empty_strings_from_registry_3_are_absent() -> None:
    (body,) = [e["body"] for e in load_envelopes("distribution-3.x-derived/02-delete-tag")][:1]
    (change,) = parse_envelope(json.dumps(body).encode()) or []
    assert change.kind is ChangeKind.TAG_DELETE
    assert change.digest is None and change.media_type is None  # sent as ""


def test_one_bad_event_sends_the_envelope_to_the_slow_path_and_only_it_fails_there() -> None:
    good = load_envelopes("distribution-2.8.2/01-push-oci-single-arch-tag")[-1]["body"]["events"][0]
    bad = {**good, "id": "bad", "target": {**good["target"], "repository": "UPPER/case"}}
    assert parse_envelope(json.dumps({"events": [good, bad]}).encode()) is None
    assert parse_event(good).repository == good["target"]["repository"]
    with pytest.raises(ValidationError):
        parse_event(bad)


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"events": []}', b'{"events": [1]}', b"\xff\xfe"])
def test_unusable_bodies_are_not_an_envelope(body: bytes) -> None:
    assert parse_envelope(body) is None


def test_a_repository_called_blobs_is_indexed_like_any_other() -> None:
    push = copy.deepcopy(load_envelopes("distribution-2.8.2/01-push-oci-single-arch-tag")[-1]["body"]["events"][0])
    blob = copy.deepcopy(load_envelopes("distribution-2.8.2/01-push-oci-single-arch-tag")[0]["body"]["events"][0])
    for event in (push, blob):
        event["target"]["repository"] = "team/blobs"
        event["target"]["url"] = event["target"]["url"].replace("/v2/myapp1/", "/v2/team/blobs/")
    assert "/v2/team/blobs/manifests/" in push["target"]["url"] and "/v2/team/blobs/blobs/" in blob["target"]["url"]
    blob["target"].pop("mediaType", None)  # the URL alone still says it is a blob
    assert parse_event(push).kind is ChangeKind.TAG_PUSH
    assert parse_event(blob).kind is ChangeKind.IGNORED


def test_a_manifest_with_thousands_of_references_keeps_them_all() -> None:
    event = copy.deepcopy(load_envelopes("distribution-2.8.2/04-push-multi-arch-index")[-1]["body"]["events"][0])
    child = event["target"]["references"][0]
    event["target"]["references"] = [{**child, "digest": f"sha256:{i:064x}"} for i in range(5000)]
    event["request"]["useragent"] = "containerd/2.0 " + "x" * 1000  # long informational text is no reason either
    change = parse_event(event)
    assert change.kind is ChangeKind.TAG_PUSH and len(change.references) == 5000
