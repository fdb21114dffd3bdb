"""Semantic versions in tags: strict parsing, SemVer 2.0.0 precedence, and the byte-ordered sort key."""

from __future__ import annotations

import functools

from hypothesis import given
from hypothesis import strategies as st

from consumer import semver


def test_v_prefix_and_prerelease_parse() -> None:
    v = semver.parse("v1.2.3-rc.1+build.5")
    assert v is not None
    assert (v.major, v.minor, v.patch, v.prerelease, v.build) == (1, 2, 3, ("rc", "1"), "build.5")
    assert v.is_prerelease and str(v) == "1.2.3-rc.1+build.5"


def test_only_full_versions_count() -> None:
    for tag in (
        "1.2",
        "1",
        "latest",
        "20240101",
        "deadbeef",
        "1.02.3",
        "1.2.3-01",
        "V1.2.3",
        "1.2.3.4",
        "vv1.2.3",
        "1.2.3-",
        "1.2.3-a..b",
        "",
    ):
        assert semver.parse(tag) is None, tag
    assert semver.parse("1" * 100 + ".0.0") is None  # too long to encode


def test_numeric_comparison_not_lexical() -> None:
    assert semver.parse("1.10.0") > semver.parse("1.9.0")  # type: ignore[operator]
    assert semver.parse("10.0.0") > semver.parse("9.99.99")  # type: ignore[operator]


def test_semver_spec_precedence_example() -> None:
    # semver.org section 11, in ascending order.
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "2.0.0",
        "2.1.0",
        "2.1.1",
    ]
    versions = [semver.parse(t) for t in ordered]
    assert all(v is not None for v in versions)
    keys = [v.sort_key for v in versions if v is not None]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_build_metadata_and_prefix_do_not_change_precedence() -> None:
    assert semver.parse("v1.0.0") == semver.parse("1.0.0+abc")


def _reference_cmp(a: semver.Version, b: semver.Version) -> int:
    """SemVer 2.0.0 section 11, written directly from the spec's prose."""
    for x, y in ((a.major, b.major), (a.minor, b.minor), (a.patch, b.patch)):
        if x != y:
            return -1 if x < y else 1
    if not a.prerelease or not b.prerelease:
        return (not a.prerelease) - (not b.prerelease)
    for x, y in zip(a.prerelease, b.prerelease, strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1
        return -1 if x < y else 1
    return (len(a.prerelease) > len(b.prerelease)) - (len(a.prerelease) < len(b.prerelease))


_number = st.integers(min_value=0, max_value=10**12).map(str)
_alnum = st.from_regex(r"[0-9A-Za-z-]*[A-Za-z-][0-9A-Za-z-]*", fullmatch=True).filter(lambda s: len(s) <= 12)
_ident = st.one_of(_number, _alnum)
_tags = st.builds(
    lambda v, nums, pre: ("v" if v else "") + ".".join(nums) + ("-" + ".".join(pre) if pre else ""),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=10**15).map(str), min_size=3, max_size=3),
    st.lists(_ident, max_size=4),
)


@given(st.lists(_tags, min_size=2, max_size=12))
def test_sort_key_order_equals_spec_precedence(tags: list[str]) -> None:
    versions = [semver.parse(t) for t in tags]
    assert all(v is not None for v in versions), tags
    parsed = [v for v in versions if v is not None]
    by_key = sorted(parsed, key=lambda v: v.sort_key)
    by_spec = sorted(parsed, key=functools.cmp_to_key(_reference_cmp))
    assert [v.sort_key for v in by_key] == [v.sort_key for v in by_spec]
    for a in parsed:
        for b in parsed:
            assert (a.sort_key < b.sort_key) == (_reference_cmp(a, b) < 0)
            # Redis compares members byte by byte: the key followed by " <tag>" must keep the order.
            if _reference_cmp(a, b) < 0:
                assert (a.sort_key + " x").encode() < (b.sort_key + " a").encode()
