"""The ``policies:`` section: which repositories get which ``latest`` and retention rules.

Repository globs: ``*`` matches any run of characters (``/`` included), ``?`` one character; nothing
else is special, and a glob must match the whole name. When several policies match a repository,
the most specific glob wins, compared in this order:

1. an exact name (no wildcard) beats any glob;
2. a longer literal prefix (the characters before the first wildcard) wins: ``team/api-*`` beats ``team/*``;
3. fewer wildcards win: ``team/*-api`` beats ``team/*-*``;
4. more literal characters win: ``*-api`` beats ``*i``;
5. still equal: the policy listed first wins.

So ``repositories: ["*"]`` is the default policy: it matches everything and loses to any other match.
The same glob may not appear in two policies.

Tag patterns (``keep: - tags:`` and ``protected:``): a pattern starting with ``^`` is a Python regular
expression, searched as written (so ``^v\\d+$`` is anchored at both ends, ``^v\\d+`` only at the
start); any other pattern is a glob with ``*`` and ``?`` matching the whole tag (``release-*``).
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    StringConstraints,
    Tag,
    field_validator,
)
from pydantic_core import CoreSchema, core_schema

from consumer.durations import parse_duration_seconds

LATEST = "latest"
_GLOB_CHARS = re.compile(r"^[a-z0-9._/\-*?]+$")
_TAG_GLOB_CHARS = re.compile(r"^[\w.\-*?]+$")
_WILDCARDS = frozenset("*?")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _duration(value: Any) -> Any:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return parse_duration_seconds(value)
    return value


# A duration in config ("30d", "24h", or seconds); the model attribute is in seconds.
DurationSeconds = Annotated[int, BeforeValidator(_duration), Field(gt=0)]


def _glob_regex(glob: str, charset: str) -> re.Pattern[str]:
    body = "".join(f"{charset}*" if c == "*" else charset if c == "?" else re.escape(c) for c in glob)
    return re.compile(rf"^{body}$", re.DOTALL)


@functools.lru_cache(maxsize=1024)
def text_glob(glob: str) -> re.Pattern[str]:
    """A glob over any text, matched whole: ``*`` any run of characters, ``?`` one, nothing else special."""
    return _glob_regex(glob, ".")


@dataclass(frozen=True, slots=True)
class Specificity:
    """How specific a repository glob is; greater is more specific (see the module docstring)."""

    exact: bool
    literal_prefix: int
    wildcards: int
    literal_chars: int

    def key(self) -> tuple[bool, int, int, int]:
        return (self.exact, self.literal_prefix, -self.wildcards, self.literal_chars)


def specificity(glob: str) -> Specificity:
    """The specificity of one repository glob."""
    wildcards = sum(1 for c in glob if c in _WILDCARDS)
    first = next((i for i, c in enumerate(glob) if c in _WILDCARDS), len(glob))
    return Specificity(
        exact=wildcards == 0, literal_prefix=first, wildcards=wildcards, literal_chars=len(glob) - wildcards
    )


class TagPattern(str):
    """A tag regex (starts with ``^``) or glob, validated and compiled once."""

    __slots__ = ("_regex",)
    _regex: re.Pattern[str]

    def __new__(cls, text: str) -> TagPattern:
        self = super().__new__(cls, text)
        if text.startswith("^"):
            try:
                self._regex = re.compile(text)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {text!r}: {exc}") from exc
        else:
            if not _TAG_GLOB_CHARS.match(text):
                raise ValueError(
                    f"invalid tag glob {text!r}: use letters, digits, '_', '.', '-', '*' and '?', "
                    "or a regular expression starting with '^'"
                )
            self._regex = _glob_regex(text, r"[\w.-]")
        return self

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(min_length=1, max_length=256),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @property
    def is_regex(self) -> bool:
        return self.startswith("^")

    def matches(self, tag: str) -> bool:
        """True when ``tag`` matches this pattern."""
        return self._regex.search(tag) is not None


def matches_any(patterns: Sequence[TagPattern], tag: str) -> TagPattern | None:
    """The first pattern that matches ``tag``, or None."""
    return next((p for p in patterns if p.matches(tag)), None)


class LatestPolicy(_Section):
    """How ``latest`` is kept: which tag it should follow, and whether to fix or only report it."""

    mode: Literal["highest-semver", "newest-push", "manual"] = "highest-semver"
    action: Literal["report", "fix"] = "report"
    include_prereleases: bool = False


# Keep rules: each is a one-key mapping in YAML. ``rule`` names it in retention plans.
class KeepLastPushed(_Section):
    """Keep the N most recently pushed tags (protected tags and ``latest`` not counted)."""

    rule: ClassVar[str] = "last_pushed"
    last_pushed: int = Field(ge=1)


class KeepPushedWithin(_Section):
    """Keep tags pushed within the duration."""

    rule: ClassVar[str] = "pushed_within"
    pushed_within_seconds: DurationSeconds = Field(alias="pushed_within")


class KeepPulledWithin(_Section):
    """Keep tags pulled within the duration; a tag never pulled counts as pulled when pushed."""

    rule: ClassVar[str] = "pulled_within"
    pulled_within_seconds: DurationSeconds = Field(alias="pulled_within")


class KeepSemverLatest(_Section):
    """Keep the N highest semantic-version tags (protected tags and ``latest`` not counted)."""

    rule: ClassVar[str] = "semver_latest"
    semver_latest: int = Field(ge=1)


class KeepTags(_Section):
    """Keep tags matching any of the patterns."""

    rule: ClassVar[str] = "tags"
    tags: tuple[TagPattern, ...]

    @field_validator("tags")
    @classmethod
    def _not_empty(cls, tags: tuple[TagPattern, ...]) -> tuple[TagPattern, ...]:
        if not tags:
            raise ValueError("list at least one tag pattern")
        return tags

    def matching(self, tag: str) -> TagPattern | None:
        """The first pattern that keeps ``tag``, or None."""
        return matches_any(self.tags, tag)


_RULE_NAMES = ("last_pushed", "pushed_within", "pulled_within", "semver_latest", "tags")


def _rule_name(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return str(getattr(value, "rule", None))
    if isinstance(value, dict) and len(value) == 1:
        (name,) = value
        return str(name) if name in _RULE_NAMES else None
    return None


def _one_key_rule(value: Any) -> Any:
    if isinstance(value, BaseModel) or _rule_name(value) is not None:
        return value
    got = sorted(value) if isinstance(value, dict) else repr(value)
    raise ValueError(f"each keep rule is a mapping with one key, one of {', '.join(_RULE_NAMES)}; got {got}")


KeepRule = Annotated[
    Annotated[KeepLastPushed, Tag("last_pushed")]
    | Annotated[KeepPushedWithin, Tag("pushed_within")]
    | Annotated[KeepPulledWithin, Tag("pulled_within")]
    | Annotated[KeepSemverLatest, Tag("semver_latest")]
    | Annotated[KeepTags, Tag("tags")],
    Discriminator(_rule_name),
    BeforeValidator(_one_key_rule),
]


class UntaggedPolicy(_Section):
    """Manifests without tags (left by a moved tag or a push by digest) go after a grace period."""

    delete_after_seconds: DurationSeconds = Field(alias="delete_after")


class RetentionPolicy(_Section):
    """Which tags to keep; everything else is deleted (or only planned, under ``dry_run``)."""

    dry_run: bool = True
    keep: tuple[KeepRule, ...] = ()
    protected: tuple[TagPattern, ...] = ()
    untagged: UntaggedPolicy | None = None
    max_deletions_per_run: int = Field(default=20, ge=1, le=10_000)

    def is_protected(self, tag: str) -> bool:
        """``latest`` and the ``protected`` patterns are always kept."""
        return tag == LATEST or matches_any(self.protected, tag) is not None


class UnexpectedDeletionPolicy(_Section):
    """What happens besides the alert when someone else deletes in a repository."""

    revoke_actor: bool = False


RepositoryGlob = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class Policy(_Section):
    """One entry of ``policies:``."""

    repositories: tuple[RepositoryGlob, ...] = Field(min_length=1)
    latest: LatestPolicy | None = None
    retention: RetentionPolicy | None = None
    on_unexpected_deletion: UnexpectedDeletionPolicy = UnexpectedDeletionPolicy()

    @field_validator("repositories")
    @classmethod
    def _check_globs(cls, globs: tuple[str, ...]) -> tuple[str, ...]:
        for glob in globs:
            if not _GLOB_CHARS.match(glob):
                raise ValueError(f"invalid repository glob {glob!r}: lower-case name characters, '/', '*' and '?'")
        if len(set(globs)) != len(globs):
            raise ValueError("a glob is listed twice")
        return globs

    def is_protected(self, tag: str) -> bool:
        """Whether ``tag`` is protected here (``latest`` always is)."""
        if self.retention is not None:
            return self.retention.is_protected(tag)
        return tag == LATEST

    def match(self, repository: str) -> Specificity | None:
        """The specificity of this policy's best glob matching ``repository``, or None."""
        matching = [specificity(g) for g in self.repositories if text_glob(g).match(repository)]
        return max(matching, key=Specificity.key, default=None)


def check_unique_globs(policies: Sequence[Policy]) -> None:
    """Raise ValueError when two policies list the same glob (which one applies would be arbitrary)."""
    owner: dict[str, int] = {}
    for i, policy in enumerate(policies):
        for glob in policy.repositories:
            if glob in owner:
                raise ValueError(f"repository glob {glob!r} is in policies[{owner[glob]}] and policies[{i}]")
            owner[glob] = i


class PolicySet:
    """Selects the policy of a repository; answers are cached (policies are immutable)."""

    def __init__(self, policies: Sequence[Policy], cache_size: int = 4096) -> None:
        self._policies = tuple(policies)
        self._cache: OrderedDict[str, Policy | None] = OrderedDict()
        self._cache_size = cache_size

    @property
    def policies(self) -> tuple[Policy, ...]:
        return self._policies

    def policy_for(self, repository: str) -> Policy | None:
        """The most specific matching policy, or None when no policy (not even ``*``) matches."""
        if repository in self._cache:
            self._cache.move_to_end(repository)
            return self._cache[repository]
        chosen: Policy | None = None
        best: tuple[bool, int, int, int] | None = None
        for policy in self._policies:
            spec = policy.match(repository)
            # Strictly greater: on a tie the policy listed first keeps its place.
            if spec is not None and (best is None or spec.key() > best):
                chosen, best = policy, spec.key()
        self._cache[repository] = chosen
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return chosen


def describe_policy(index: int, raw: Any) -> str:
    """``policies[0] (team/*, infra/*)``: how configuration errors name a policy."""
    repos = raw.get("repositories") if isinstance(raw, dict) else None
    if isinstance(repos, list | tuple) and repos:
        return f"policies[{index}] ({', '.join(str(r) for r in repos)})"
    return f"policies[{index}]"
