"""The request journal: every request as the exchange saw it, for tests to count and inspect."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One request as the exchange saw it; never the signature or the raw payload header."""

    time: float
    path: str
    api_key: str | None
    payload: dict[str, Any]
    status: int  # 0 when no answer was sent (the "drop" fault)
    reason: str | None
    fault: str | None

    @property
    def nonce(self) -> Any:
        return self.payload.get("nonce")


class Journal:
    """The last `limit` entries, oldest first. Not locked: callers hold the exchange's lock."""

    def __init__(self, limit: int) -> None:
        self._entries: collections.deque[JournalEntry] = collections.deque(maxlen=limit)

    def append(self, entry: JournalEntry) -> None:
        self._entries.append(entry)

    def entries(self) -> list[JournalEntry]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def count(self, path: str | None = None, status: int | None = None) -> int:
        return sum(
            1
            for e in self._entries
            if (path is None or e.path == path) and (status is None or e.status == status)
        )
