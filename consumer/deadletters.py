"""The capped dead-letter stream: content the webhook could not use, kept with its reason.

Bad content is never refused with a 4xx, because the registry would retry it forever and hold
every later event behind it; it lands here instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis


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

    async def latest(self, count: int = 100) -> list[DeadLetter]:
        """The newest entries first."""
        rows: list[tuple[bytes, dict[bytes, bytes]]] = await self._redis.xrevrange(  # type: ignore[assignment]
            self._key, count=count
        )
        return [
            DeadLetter(
                id=entry_id.decode(),
                reason=fields[b"reason"].decode(),
                payload=fields[b"payload"].decode("utf-8", "replace"),
                received_at=float(fields[b"received_at"]),
            )
            for entry_id, fields in rows
        ]
