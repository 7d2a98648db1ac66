"""API keys: made, listed and revoked here; `KeyRing` is the API's snapshot of them.

A key is `tdm_` followed by 32 random bytes (`secrets.token_urlsafe`). Only its SHA-256 is
stored: a key carries 256 bits of entropy, so nobody can search the hash's preimage, and a slow
hash (bcrypt, Argon2), which exists to protect guessable passwords, would only add
milliseconds to every request.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.errors import Conflict, Invalid, NotFound
from app.tables import ApiKey, Twin

KEY_PREFIX = "tdm_"
SHOWN_CHARS = 8  # characters of the random part kept (and listed) to recognize a key
SCOPES = ("read", "ingest", "admin")


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    session: Session,
    name: str,
    scopes: list[str],
    twins: list[int] | None = None,
    rate: float | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key; returns the row and the secret, which exists nowhere else after this."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise Invalid(
            f"scopes must be some of {', '.join(SCOPES)}",
            [{"field": "scopes", "message": f"unknown: {unknown}" if unknown else "empty"}],
        )
    if twins is not None:
        twins = sorted(set(twins))
        found = set(session.scalars(select(Twin.id).where(Twin.id.in_(twins))))
        if missing := [t for t in twins if t not in found]:
            raise Invalid(
                f"no twin with id {', '.join(map(str, missing))}",
                [{"field": "twins", "message": f"unknown twin id(s): {missing}"}],
            )
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise Conflict(f"an API key named {name!r} exists")
    secret = new_secret()
    key = ApiKey(
        name=name,
        prefix=secret[: len(KEY_PREFIX) + SHOWN_CHARS],
        hash=key_hash(secret),
        scopes=[s for s in SCOPES if s in scopes],
        twins=twins,
        rate=rate,
        created_at=time.time(),
    )
    session.add(key)
    try:
        session.flush()
    except IntegrityError as e:  # a concurrent create took the name
        raise Conflict(f"an API key named {name!r} exists") from e
    return key, secret


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(session: Session, key_id: int) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no API key with id {key_id}")
    session.delete(key)
    session.flush()
    return key


@dataclass(frozen=True)
class KeyInfo:
    """What a request needs to know of its key (never the secret or its hash)."""

    id: int
    name: str
    scopes: frozenset[str]
    twins: frozenset[int] | None
    rate: float | None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class KeyRing:
    """The keys table in memory, by hash, reloaded when older than `max_age` seconds or after
    this process changed it (`invalidate`). Keys made or revoked by another process (the CLI,
    another API process) take effect here within `max_age`."""

    def __init__(self, sessions: Callable[[], sessionmaker[Session] | None], max_age: float):
        self.sessions = sessions
        self.max_age = max_age
        self._keys: dict[str, KeyInfo] | None = None
        self._loaded_at = -float("inf")
        self._changes = 0  # invalidations so far; a snapshot read across one is not fresh
        self._trusted = 0  # the value of _changes the current snapshot was read after
        self._lock = threading.Lock()

    def fresh(self) -> dict[str, KeyInfo] | None:
        """The keys by hash if the snapshot is recent enough, else None (without blocking)."""
        keys = self._keys
        if keys is not None and time.monotonic() - self._loaded_at < self.max_age:
            return keys
        return None

    def invalidate(self) -> None:
        self._changes += 1
        self._loaded_at = -float("inf")

    def load(self) -> dict[str, KeyInfo]:
        """The keys by hash, reloaded if stale (blocking: call it from a thread). While another
        thread reloads, the snapshot in hand is used, unless this process changed the keys since
        it was read; when the database cannot be read, likewise; without one, it raises."""
        started = time.monotonic()
        usable = self._keys is not None and self._trusted == self._changes
        if not self._lock.acquire(blocking=not usable):
            return self._keys  # a reload is under way (a slow database): do not queue behind it
        try:
            if self._keys is not None and self._loaded_at >= started - self.max_age:
                return self._keys  # another thread reloaded while this one waited
            changes = self._changes
            try:
                factory = self.sessions()
                if factory is None:
                    raise RuntimeError("the app has not started")
                with factory() as session:
                    rows = session.scalars(select(ApiKey)).all()
            except Exception:
                if self._keys is None or self._trusted != self._changes:
                    raise
                return self._keys
            self._keys = {
                r.hash: KeyInfo(
                    id=r.id,
                    name=r.name,
                    scopes=frozenset(r.scopes),
                    twins=None if r.twins is None else frozenset(r.twins),
                    rate=r.rate,
                )
                for r in rows
            }
            self._trusted = changes
            if changes == self._changes:  # else a change landed during the read: read again
                self._loaded_at = time.monotonic()
            return self._keys
        finally:
            self._lock.release()
