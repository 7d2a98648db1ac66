"""What a post of observations needs of its twin, kept in memory by the API process: its name
and its channels. Both are fixed when the twin is created (no route renames a twin or changes
its spec, and twin ids are never reused), so an entry never goes stale while the twin exists;
a twin deleted since it was cached is refused by the write itself (`ingestion._lock_twin`
finds no live row: 404), and a post that fails its checks against cached channels is checked
again against the database, so that a deleted twin answers 404 rather than 422."""

from __future__ import annotations

import threading
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.tables import Twin

SIZE = 100_000  # twins remembered (about 200 bytes each); the oldest entry goes first


class TwinChannels(NamedTuple):
    name: str
    inputs: list[str]
    outputs: list[str]


class ChannelCache:
    """Twin id -> `TwinChannels`, read without a query once seen (thread-safe)."""

    def __init__(self, size: int = SIZE):
        self.size = size
        self._items: dict[int, TwinChannels] = {}
        self._lock = threading.Lock()

    def get(self, session: Session, twin_id: int) -> TwinChannels:
        """The twin's name and channels: from memory, or from the database (404 for a twin
        that does not exist or was deleted)."""
        hit = self._items.get(twin_id)
        return hit if hit is not None else self.load(session, twin_id)

    def load(self, session: Session, twin_id: int) -> TwinChannels:
        """From the database, always (and remembered)."""
        row = session.execute(
            select(Twin.name, Twin.spec).where(Twin.id == twin_id, Twin.deleted_at.is_(None))
        ).first()
        if row is None:
            self.forget(twin_id)
            raise NotFound(f"twin {twin_id} does not exist")
        channels = TwinChannels(row[0], list(row[1]["inputs"]), list(row[1]["outputs"]))
        with self._lock:
            self._items[twin_id] = channels
            while len(self._items) > self.size:
                del self._items[next(iter(self._items))]
        return channels

    def cached(self, twin_id: int) -> bool:
        return twin_id in self._items

    def forget(self, twin_id: int) -> None:
        with self._lock:
            self._items.pop(twin_id, None)

    def __len__(self) -> int:
        return len(self._items)
