"""Every Redis key name the service uses is built here.

All keys of one repository share the Redis Cluster hash tag ``{repository}``, so each Lua script that
changes a repository touches a single slot. Global keys (the repository catalogue, the dead-letter
stream) are never touched from a script together with per-repository keys.
"""

from __future__ import annotations

import hashlib
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

    @property
    def versions(self) -> str:
        """ZSET (all scores 0) of ``"<Version.sort_key> <tag>"``: live version tags in SemVer order."""
        return f"{self.base}:versions"

    @property
    def parents(self) -> str:
        """ZSET (all scores 0) of ``"<child> <index>"``: which index manifests list a manifest (retention)."""
        return f"{self.base}:parents"

    @property
    def untagged_since(self) -> str:
        """ZSET digest -> unix microseconds since which a live manifest has had no tag (retention)."""
        return f"{self.base}:untagged_since"

    @property
    def subjects(self) -> str:
        """HASH digest -> the digest its ``subject`` names ('' for none), learned before deleting (retention)."""
        return f"{self.base}:subjects"

    @property
    def retention_protected(self) -> str:
        """ZSET tag -> push time (us): the live tags the repository's retention policy protects (not counted)."""
        return f"{self.base}:retention_protected"

    @property
    def retention_protected_versions(self) -> str:
        """ZSET (all scores 0) of the version index members of the protected live tags."""
        return f"{self.base}:retention_protected_versions"

    @property
    def retention_meta(self) -> str:
        """HASH: retention bookkeeping of the repository (``protected``: fingerprint the protected sets follow)."""
        return f"{self.base}:retention_meta"

    @property
    def retention_dry_run(self) -> str:
        """HASH ``t:<tag>``/``m:<digest>`` -> digest: deletions a dry-run policy has planned and counted."""
        return f"{self.base}:retention_dry_run"

    @property
    def retention_claims(self) -> str:
        """ZSET ``t:<tag>``/``m:<digest>`` -> unix expiry: deletions queued and not finished (no duplicates)."""
        return f"{self.base}:retention_claims"

    def intent_tag(self, tag: str) -> str:
        """STRING with a TTL: the consumer is about to delete this tag (its delete event is expected)."""
        return f"{self.base}:intent:t:{tag}"

    def intent_digest(self, digest: str) -> str:
        """STRING with a TTL: the consumer is about to delete this manifest by digest."""
        return f"{self.base}:intent:d:{digest}"

    def intent_request(self, request_id: str) -> str:
        """STRING with a TTL: how the delete events of one registry request are judged (expected/reported)."""
        return f"{self.base}:intent:r:{request_id}"

    @property
    def audit(self) -> str:
        """Capped STREAM of this repository's audit records (expires when the repository goes quiet)."""
        return f"{self.base}:audit"

    @property
    def latest_state(self) -> str:
        """HASH: the ``latest`` bookkeeping of the repository (expected tag/digest, stale, pending fix)."""
        return f"{self.base}:latest"

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


# The hash tag of every revocation key. A leading "_" cannot start a repository name, so this slot's
# keys never share a tag with a repository's keys.
REVOCATIONS_TAG = "{_revocations}"


@dataclass(frozen=True, slots=True)
class RevocationKeys:
    """The keys of the JWT revocation list.

    They all carry the hash tag ``{_revocations}``: the per-request check is one ``MGET`` and every
    revocation script or transaction touches a single Redis Cluster slot. A revocation's key name is
    also its entry id in ``index``, ``expiries`` and ``entries``.
    """

    base: str

    def token(self, issuer: str, jti: str) -> str:
        """STRING ``1`` until the token's ``exp`` + leeway: this one token (issuer + ``jti``) is revoked.

        The issuer is hashed (it is a URL at most token servers); the ``jti`` is bounded by the verifier.
        """
        digest = hashlib.sha256(issuer.encode()).hexdigest()[:16]
        return f"{self.base}:token:{digest}:{jti}"

    def subject(self, subject: str) -> str:
        """STRING unix seconds T: every token of ``subject`` issued at or before T is revoked."""
        return f"{self.base}:subject:{subject}"

    @property
    def all(self) -> str:
        """STRING unix seconds T: every token issued at or before T is revoked."""
        return f"{self.base}:all"

    @property
    def index(self) -> str:
        """ZSET (scores 0) of the revocations' key names, for lex-ordered pagination of the list."""
        return f"{self.base}:index"

    @property
    def expiries(self) -> str:
        """ZSET revocation key name -> unix seconds when it lapses, to forget lapsed list entries."""
        return f"{self.base}:expiries"

    @property
    def entries(self) -> str:
        """HASH revocation key name -> JSON description (kind, issuer, jti, subject, cutoff)."""
        return f"{self.base}:entries"

    @property
    def changed_channel(self) -> str:
        """Pub/sub channel: a message after every revocation, so replicas drop their cached check answers."""
        return f"{self.base}:changed"


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

    @property
    def audit(self) -> str:
        """Capped STREAM of every audit record (all repositories), newest last."""
        return f"{self.prefix}:audit"

    def audit_kind(self, kind: str) -> str:
        """Capped STREAM of the audit records of one kind (``unexpected_deletion``...)."""
        return f"{self.prefix}:audit:kind:{kind}"

    @property
    def latest_stale(self) -> str:
        """ZSET repository -> unix seconds since which its ``latest`` is stale."""
        return f"{self.prefix}:latest:stale"

    @property
    def reconcile_lock(self) -> str:
        """STRING with a TTL: held by the one process running a reconciliation."""
        return f"{self.prefix}:reconcile:lock"

    @property
    def retention_queue(self) -> str:
        """STREAM of planned deletions, read by the deleters' consumer group."""
        return f"{self.prefix}:retention:queue"

    @property
    def retention_rate(self) -> str:
        """STRING: the deletion rate limiter's theoretical arrival time (GCRA), in milliseconds."""
        return f"{self.prefix}:retention:rate"

    @property
    def retention_sweep_lock(self) -> str:
        """STRING with a TTL: held by the one process running the periodic retention sweep."""
        return f"{self.prefix}:retention:sweep_lock"

    @property
    def revocations(self) -> RevocationKeys:
        """The keys of the JWT revocation list (one hash slot)."""
        return RevocationKeys(f"{self.prefix}:{REVOCATIONS_TAG}")
