"""The audit log: what the policies did, and what others did that nobody planned.

Every record is appended to three capped Redis streams: the global one, one per kind, and one per
repository (under the repository's hash tag). A query reads exactly one of them:

- no filter: the global stream; ``kind`` alone: that kind's stream; ``repository``: its stream. Each is
  a plain reverse range read, O(log N + n).
- ``repository`` and ``kind`` together: the repository's stream, filtered while scanning, at most
  ``SCAN_BOUND`` entries per page. A page can then hold fewer than ``n`` records (even none) and
  still carry ``next``: follow ``next`` until it is null. Per repository the kinds are few and the
  stream is small, so this beats a stream per (repository, kind) pair.

Retention is bounded three ways: each stream is capped by length (``MAXLEN ~``), the global and kind
streams are trimmed by age (``MINID ~``) on every write, and a repository's stream expires once the
repository has had no record for ``max_age_seconds``. Writes go to three hash slots, so they are not
atomic together; a reader of one stream never needs the others.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from consumer.index import text
from consumer.rediskeys import RedisKeys
from consumer.settings import AuditSettings

AuditKind = Literal[
    "retention_delete", "latest_fix", "latest_stale", "unexpected_deletion", "reconcile_repair", "actor_revoked"
]
KINDS: tuple[AuditKind, ...] = (
    "retention_delete",
    "latest_fix",
    "latest_stale",
    "unexpected_deletion",
    "reconcile_repair",
    "actor_revoked",
)
SCAN_BOUND = 2000
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_FIELDS = ("repository", "tag", "digest", "actor", "addr", "user_agent", "detail")
MAX_FIELD_CHARS = 2048


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit record; ``id`` is its stream id (the pagination cursor of the stream it was read from)."""

    id: str
    time: str
    kind: str
    repository: str
    tag: str | None
    digest: str | None
    actor: str | None
    addr: str | None
    user_agent: str | None
    protected: bool
    detail: str | None


def _iso_ms(stream_id: str) -> str:
    ms = int(stream_id.split("-", 1)[0])
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _record(entry_id: Any, raw: dict[Any, Any] | None) -> AuditRecord:
    fields = {text(k): text(v) for k, v in (raw or {}).items()}
    sid = text(entry_id)
    return AuditRecord(
        id=sid,
        time=_iso_ms(sid),
        kind=fields.get("kind", ""),
        repository=fields.get("repository", ""),
        tag=fields.get("tag") or None,
        digest=fields.get("digest") or None,
        actor=fields.get("actor") or None,
        addr=fields.get("addr") or None,
        user_agent=fields.get("user_agent") or None,
        protected=fields.get("protected") == "1",
        detail=fields.get("detail") or None,
    )


class AuditLog:
    """Appends and pages audit records (see the module docstring for the layout)."""

    def __init__(self, redis: Redis, keys: RedisKeys, settings: AuditSettings) -> None:
        self._redis = redis
        self._keys = keys
        self._settings = settings

    async def record(
        self,
        kind: AuditKind,
        repository: str,
        *,
        tag: str | None = None,
        digest: str | None = None,
        actor: str | None = None,
        addr: str | None = None,
        user_agent: str | None = None,
        protected: bool = False,
        detail: str | None = None,
    ) -> None:
        """Append one record (time is the stream id: the Redis server's clock, in milliseconds)."""
        if kind not in KINDS:
            raise ValueError(f"unknown audit kind {kind!r}")
        values = {
            "repository": repository,
            "tag": tag,
            "digest": digest,
            "actor": actor,
            "addr": addr,
            "user_agent": user_agent,
            "detail": detail,
        }
        fields: dict[FieldT, EncodableT] = {"kind": kind, "protected": "1" if protected else "0"}
        fields.update({k: v[:MAX_FIELD_CHARS] for k, v in values.items() if v})
        settings = self._settings
        oldest = f"{int((time.time() - settings.max_age_seconds) * 1000)}-0"
        repo_stream = self._keys.repo(repository).audit
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in (self._keys.audit, self._keys.audit_kind(kind)):
                pipe.xadd(stream, fields, maxlen=settings.max_entries, approximate=True)
                pipe.xtrim(stream, minid=oldest, approximate=True)
            pipe.xadd(repo_stream, fields, maxlen=settings.repository_max_entries, approximate=True)
            pipe.expire(repo_stream, settings.max_age_seconds)
            await pipe.execute()

    async def page(
        self, *, repository: str | None = None, kind: str | None = None, n: int = 100, last: str | None = None
    ) -> tuple[list[AuditRecord], str | None]:
        """Records newest first, at most ``n``, older than the cursor ``last``; and the next cursor or None."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown audit kind {kind!r}")
        if last is not None and not STREAM_ID.match(last):
            raise ValueError("last must be a cursor returned as next")
        if repository is not None:
            stream = self._keys.repo(repository).audit
        elif kind is not None:
            stream = self._keys.audit_kind(kind)
        else:
            stream = self._keys.audit
        wanted = kind if repository is not None else None
        return await self._scan(stream, wanted, n, last)

    async def _scan(
        self, stream: str, kind: str | None, n: int, last: str | None
    ) -> tuple[list[AuditRecord], str | None]:
        records: list[AuditRecord] = []
        cursor = last
        scanned = 0
        batch = n + 1 if kind is None else max(100, 4 * n)
        while True:
            entries = await self._redis.xrevrange(stream, max=f"({cursor}" if cursor else "+", min="-", count=batch)
            entries = entries or []
            for entry_id, raw in entries:
                scanned += 1
                record = _record(entry_id, raw)
                cursor = record.id
                if kind is not None and record.kind != kind:
                    if scanned >= SCAN_BOUND:
                        return records, cursor
                    continue
                if len(records) == n:
                    # There is at least one more match: the page ends at the last record returned.
                    return records, records[-1].id
                records.append(record)
                if scanned >= SCAN_BOUND and kind is not None:
                    return records, cursor
            if len(entries) < batch:
                return records, None
