"""API clients: named keys with scopes, shown once and stored only as hashes.

A key looks like `clk_<key id>_<secret>`. The key id (not secret) finds the
row; the SHA-256 of the whole key is compared in constant time. Keys carry 256
random bits, so a fast hash is enough: there is nothing to brute-force.

`KeyCache` keeps the clients that authenticated, by key id with the key's hash,
for one *generation* of the clients table: a revocation or a new client changes
the generation (read with the log head), and the cache starts over. `ApiClients`
is the ledger's part that owns both.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import secrets
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Literal, get_args

from sqlalchemy import Engine, insert, select, update
from sqlmodel import col

from ledger.errors import Conflict, InvalidInput, NotFound
from ledger.service.head import HeadSnapshot
from ledger.store.db import read_session, write_session
from ledger.store.schema import ApiClient
from ledger.timestamps import format_timestamp, utc_now

Scope = Literal["check", "record", "read", "audit", "feed", "admin"]
SCOPES: tuple[str, ...] = get_args(Scope)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KEY = re.compile(r"^clk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
# Revocations made by this process: a key cache here drops its keys at once,
# without waiting to see the clients table change.
_local_revocations = itertools.count()
_revocations_seen = 0


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    scopes: frozenset[str]
    created: str
    revoked: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "scopes": sorted(self.scopes),
            "created": self.created,
            "revoked": self.revoked,
        }


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


def validate_scopes(scopes: list[str] | tuple[str, ...]) -> frozenset[str]:
    if not scopes:
        raise InvalidInput(f"at least one scope is required: {', '.join(SCOPES)}", field="scope")
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown:
        raise InvalidInput(
            f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}", field="scope"
        )
    return frozenset(scopes)


def create_client(engine: Engine, name: str, scopes: list[str]) -> tuple[Client, str]:
    """Create a client; return it and its key (the only time the key exists in clear)."""
    if not _NAME.match(name):
        raise InvalidInput("must be 1-64 characters: letters, digits and . _ -", field="name")
    granted = validate_scopes(scopes)
    key_id = secrets.token_hex(8)
    key = f"clk_{key_id}_{secrets.token_urlsafe(32)}"
    created = format_timestamp(utc_now())
    with write_session(engine) as session:
        if session.get(ApiClient, name) is not None:
            raise Conflict(f"a client named {name!r} already exists")
        session.execute(
            insert(ApiClient).values(
                name=name,
                key_id=key_id,
                key_hash=_hash(key),
                scopes=",".join(sorted(granted)),
                created=created,
            )
        )
    return Client(name=name, scopes=granted, created=created), key


def list_clients(engine: Engine) -> list[Client]:
    with read_session(engine) as session:
        rows = session.scalars(select(ApiClient).order_by(col(ApiClient.name)))
        return [
            Client(
                name=row.name,
                scopes=frozenset(row.scopes.split(",")),
                created=row.created,
                revoked=row.revoked,
            )
            for row in rows
        ]


def revoke_client(engine: Engine, name: str) -> None:
    with write_session(engine) as session:
        row = session.get(ApiClient, name)
        if row is None:
            raise NotFound(f"no client named {name!r}")
        if row.revoked is not None:
            raise Conflict(f"client {name!r} was already revoked at {row.revoked}")
        session.execute(
            update(ApiClient)
            .where(col(ApiClient.name) == name)
            .values(revoked=format_timestamp(utc_now()))
        )
    global _revocations_seen
    _revocations_seen = next(_local_revocations) + 1


def local_revocations() -> int:
    """How many clients this process has revoked (part of a key cache's generation)."""
    return _revocations_seen


def authenticate(engine: Engine, key: str) -> Client | None:
    """The active client holding `key`, or None. Constant-time in the secret part."""
    match = _KEY.match(key)
    if match is None:
        return None
    with read_session(engine) as session:
        row = session.execute(
            select(
                col(ApiClient.name),
                col(ApiClient.key_hash),
                col(ApiClient.scopes),
                col(ApiClient.created),
                col(ApiClient.revoked),
            ).where(col(ApiClient.key_id) == match.group(1))
        ).first()
    if row is None:
        # Still hash and compare, so a miss costs what a hit costs.
        hmac.compare_digest(_hash(key), b"\0" * 32)
        return None
    name, key_hash, scopes, created, revoked = row
    if not hmac.compare_digest(_hash(key), key_hash) or revoked is not None:
        return None
    return Client(name=name, scopes=frozenset(scopes.split(",")), created=created)


class _NotCached:
    """Not in the cache: ask `authenticate`."""


NOT_CACHED: Final = _NotCached()


# However the clients table changes, a cached key is checked again after this
# long (the generation misses only a deletion plus a creation between two reads).
KEY_MAX_AGE = 60.0


@dataclass(frozen=True, slots=True)
class _CachedKey:
    key_hash: bytes
    client: Client
    cached_at: float  # time.monotonic()


class KeyCache:
    """Clients that authenticated, by key id, valid for one generation of the clients table.

    The generation is anything that changes when a client is revoked (`ApiClients`
    uses the table's row and revoked-row counts, read with the log head, and
    `local_revocations()`); when it changes, every cached key is dropped. Only
    hashes are kept, and a presented key is still hashed and compared in
    constant time.
    """

    def __init__(self, max_keys: int = 1024) -> None:
        self._max = max_keys
        self._lock = threading.Lock()
        self._generation: Hashable = None
        self._by_id: dict[str, _CachedKey] = {}

    def lookup(self, key: str, generation: Hashable) -> Client | None | _NotCached:
        """The client holding `key`, None for a key that cannot be valid, or `NOT_CACHED`."""
        match = _KEY.match(key)
        if match is None:
            return None
        with self._lock:
            if generation != self._generation:
                self._by_id.clear()
                self._generation = generation
                return NOT_CACHED
            cached = self._by_id.get(match.group(1))
        if cached is None or time.monotonic() - cached.cached_at > KEY_MAX_AGE:
            return NOT_CACHED
        # The key id matched: the key is this client's only if the whole key does.
        if not hmac.compare_digest(_hash(key), cached.key_hash):
            return None
        return cached.client

    def authenticate(self, engine: Engine, key: str, generation: Hashable) -> Client | None:
        """`authenticate`, remembering an active client for `generation`.

        `generation` must have been read before this call, so that a revocation
        after the read is seen by the next generation, never cached under this one.
        """
        client = authenticate(engine, key)
        match = _KEY.match(key)
        if client is None or match is None:
            return client
        with self._lock:
            if generation == self._generation:
                if len(self._by_id) >= self._max:
                    self._by_id.clear()
                self._by_id[match.group(1)] = _CachedKey(_hash(key), client, time.monotonic())
        return client


class ApiClients:
    """The ledger's API clients: created, listed and revoked here, keys checked through a cache.

    The cache's generation is the clients' generation read with the log head plus
    this process's revocations: another process's revocation takes effect within
    the head's maximum age, this process's at once.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache = KeyCache()

    def create(self, name: str, scopes: list[str]) -> tuple[Client, str]:
        return create_client(self._engine, name, scopes)

    def list_all(self) -> list[Client]:
        return list_clients(self._engine)

    def revoke(self, name: str) -> None:
        revoke_client(self._engine, name)

    def cached(self, key: str, head: HeadSnapshot) -> Client | None | _NotCached:
        """The client holding `key` from memory, None for a key that cannot be valid, or
        `NOT_CACHED` (then ask `authenticate`, which reads the database)."""
        return self._cache.lookup(key, (head.clients, local_revocations()))

    def authenticate(self, key: str, head: HeadSnapshot) -> Client | None:
        """The active client holding `key`, read from the database and remembered."""
        return self._cache.authenticate(self._engine, key, (head.clients, local_revocations()))
