"""The capped dead-letter stream: content the webhook could not use, kept with its reason.

Bad content is never refused with a 4xx, because the registry would retry it forever and hold
every later event behind it; it lands here instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

_Rows = list[tuple[bytes, dict[bytes, bytes]]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One stored entry."""

    id: str
    reason: str
    payload: str
    received_at: float


class DeadLetters:
    """A Redis stream trimmed to about ``max_entries``; payloads cut to ``max_bytes``."""

    def __init__(self, redis: Redis, key: str, *, max_entries: int, max_bytes: int) -> None:
        self._redis = redis
        self._key = key
        self._max_entries = max_entries
        self._max_bytes = max_bytes

    async def add(self, reason: str, payload: bytes | str) -> None:
        data = payload.encode("utf-8", "replace") if isinstance(payload, str) else payload
        await self._redis.xadd(
            self._key,
            {"reason": reason[:512], "payload": data[: self._max_bytes], "received_at": repr(time.time())},
            maxlen=self._max_entries,
            approximate=True,
        )

    async def length(self) -> int:
        return int(await self._redis.xlen(self._key))

    async def page(self, n: int, before: str | None = None) -> tuple[list[DeadLetter], str | None]:
        """Up to ``n`` entries, newest first, older than the entry ``before``; and the cursor of the next page."""
        rows: _Rows = await self._redis.xrevrange(  # type: ignore[assignment]
            self._key, max=f"({before}" if before else "+", min="-", count=n + 1)
        entries = [_entry(entry_id, fields) for entry_id, fields in rows]
        return entries[:n], entries[n - 1].id if len(entries) > n else None

    async def after(self, last: str | None, n: int) -> list[DeadLetter]:
        """Up to ``n`` entries, oldest first, after the entry ``last`` (from the start when None)."""
        rows: _Rows = await self._redis.xrange(  # type: ignore[assignment]
            self._key, min=f"({last}" if last else "-", max="+", count=n)
        return [_entry(entry_id, fields) for entry_id, fields in rows]

    async def remove(self, ids: list[str]) -> None:
        """Forget these entries (replayed)."""
        if ids:
            await self._redis.xdel(self._key, *ids)


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        id=entry_id.decode(),
        reason=fields[b"reason"].decode(),
        payload=fields[b"payload"].decode("utf-8", "replace"),
        received_at=float(fields[b"received_at"]),
    )
