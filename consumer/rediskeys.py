"""Every Redis key name the service uses is built here.

All keys of one repository share the Redis Cluster hash tag ``{repository}``, so each Lua script that
changes a repository touches a single slot. Global keys (the repository catalogue, the dead-letter
stream) are never touched from a script together with per-repository keys.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RepoKeys:
    """The keys of one repository's part of the tag index."""

    base: str

    def event(self, event_id: str) -> str:
        """Dedup marker of one registry event (expires after the dedup TTL)."""
        return f"{self.base}:event:{event_id}"

    @property
    def tags(self) -> str:
        """ZSET of live tags, scored by push time in microseconds."""
        return f"{self.base}:tags"

    @property
    def tag_records(self) -> str:
        """HASH tag -> JSON record (digest, push and delete clocks, metadata), live or tombstoned."""
        return f"{self.base}:tag_records"

    @property
    def digest_tags(self) -> str:
        """ZSET (all scores 0) of ``"<digest> <tag>"`` members: the live tags of each digest, by lex range."""
        return f"{self.base}:digest_tags"

    @property
    def manifests(self) -> str:
        """ZSET of live manifests, scored by push time in microseconds."""
        return f"{self.base}:manifests"

    @property
    def manifest_records(self) -> str:
        """HASH digest -> JSON record, live or tombstoned."""
        return f"{self.base}:manifest_records"

    @property
    def tombstones(self) -> str:
        """ZSET ``t:<tag>`` / ``m:<digest>`` -> unix time after which a dead record may be forgotten."""
        return f"{self.base}:tombstones"

    def index_keys(self, event_id: str) -> list[str]:
        """The KEYS list shared by every index script, in the order their header comments give."""
        return [
            self.event(event_id),
            self.tags,
            self.tag_records,
            self.digest_tags,
            self.manifests,
            self.manifest_records,
            self.tombstones,
        ]


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key builder bound to the configured prefix (``key_prefix``)."""

    prefix: str

    def repo(self, repository: str) -> RepoKeys:
        return RepoKeys(f"{self.prefix}:{{{repository}}}")

    @property
    def repositories(self) -> str:
        """ZSET (scores 0) of every repository the index has seen, for lex-ordered pagination."""
        return f"{self.prefix}:repositories"

    @property
    def dead_letters(self) -> str:
        """Capped STREAM of envelopes or events that could not be used, each with its reason."""
        return f"{self.prefix}:dead_letters"
