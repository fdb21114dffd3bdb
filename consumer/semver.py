"""Semantic versions in tag names: strict SemVer 2.0.0, with an optional ``v`` prefix.

Only full ``MAJOR.MINOR.PATCH`` versions count (``1.2`` and ``20240101`` do not): a loose parser lets
date or commit-hash tags outrank real releases (fluxcd/flux#2729). Build metadata (``+...``) is
accepted and ignored for precedence, as the spec says; registry tags cannot contain ``+`` anyway.

``Version.sort_key`` is a byte string whose plain byte order equals SemVer precedence, so versions can
live in a Redis lex-ordered sorted set and the highest is found in O(log n).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

# semver.org's recommended regular expression, plus the optional "v".
_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
# Numbers are encoded with a two-digit length prefix, so longer than this cannot be encoded.
MAX_NUMBER_DIGITS = 99
# Byte markers of the sort key. Each must sort as the comment says relative to the others.
_RELEASE = "~"  # after the prerelease marker: 1.0.0-x < 1.0.0
_PRERELEASE = "-"
_NUMERIC_ID = "0"  # numeric identifiers sort before alphanumeric ones
_ALNUM_ID = "1"
_ID_END = "\x01"  # below every identifier character: "alpha" < "alpha-1" and "alpha" < "alpha.1"


def _number(digits: str) -> str:
    return f"{len(digits):02d}{digits}"


@total_ordering
@dataclass(frozen=True, slots=True)
class Version:
    """A parsed version; ordering is SemVer precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    @property
    def is_prerelease(self) -> bool:
        return bool(self.prerelease)

    @property
    def sort_key(self) -> str:
        """Text whose byte order is SemVer precedence (equal versions give equal keys)."""
        parts = [_number(str(self.major)), _number(str(self.minor)), _number(str(self.patch))]
        if not self.prerelease:
            parts.append(_RELEASE)
        else:
            parts.append(_PRERELEASE)
            for ident in self.prerelease:
                if ident.isdigit():
                    parts.append(_NUMERIC_ID + _number(ident) + _ID_END)
                else:
                    parts.append(_ALNUM_ID + ident + _ID_END)
        return "".join(parts)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key < other.sort_key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key == other.sort_key

    def __hash__(self) -> int:
        return hash(self.sort_key)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text


def parse(tag: str) -> Version | None:
    """The version a tag names (``1.2.3``, ``v1.2.3-rc.1``), or None when it is not a full SemVer."""
    match = _SEMVER.match(tag)
    if match is None:
        return None
    major, minor, patch, pre, build = match.groups()
    numbers = [major, minor, patch, *(p for p in (pre or "").split(".") if p.isdigit())]
    if any(len(n) > MAX_NUMBER_DIGITS for n in numbers):
        return None
    return Version(int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else (), build or "")


def is_version(tag: str) -> bool:
    """True when ``tag`` is a full semantic version."""
    return parse(tag) is not None
