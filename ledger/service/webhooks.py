"""Webhook endpoints and their delivery state (SPEC §8): who wants which events, how far
each has acknowledged the feed, the batch it is being sent, and which process delivers.

This is operational state, outside the log and not derived from it (`verify` has no
step for it): an endpoint's cursor says what was acknowledged, not what is true. Every
change of a cursor or a batch is a compare-and-swap on the cursor it started from, so a
deliverer that lost its lease without knowing it can repeat a delivery (at least once)
but never move a cursor past an event that was not acknowledged.

The deliverer is elected with one lease row (`webhook_lease`): a process takes it with
an UPDATE that succeeds only if the lease is free, expired or already its own, renews it
every third of its term, and gives it up when it stops. Expiry is judged by the
database's clock, so instances on different hosts agree on it. It works the same on
SQLite and PostgreSQL: the UPDATE is atomic on both, and its row count says who won.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, delete, insert, literal_column, select, update
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from ledger.consent.entries import KINDS
from ledger.errors import Conflict, InvalidInput, NotFound, SigningKeyError
from ledger.store.db import read_session, state_session
from ledger.store.schema import WebhookBatch, WebhookEndpoint, WebhookLease
from ledger.timestamps import format_timestamp, utc_now
from ledger.tlog import log

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_URL = 2048
MAX_ERROR = 512


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """The batch an endpoint is being sent: the events of its kinds with seq in
    [`from_cursor`, `next_cursor`), the first and last of them at `first_seq`, `last_seq`."""

    endpoint: str
    from_cursor: int
    first_seq: int
    last_seq: int
    next_cursor: int
    created: str
    attempts: int
    first_failure: str | None
    next_attempt: str | None
    last_error: str | None

    @property
    def webhook_id(self) -> str:
        """The batch's `webhook-id`: the same on every attempt, before and after a restart."""
        return webhook_id(self.endpoint, self.first_seq, self.last_seq)

    def to_json(self) -> dict[str, Any]:
        return {
            "webhook_id": self.webhook_id,
            "after": self.from_cursor,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "next": self.next_cursor,
            "attempts": self.attempts,
            "first_failure": self.first_failure,
            "next_attempt": self.next_attempt,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A webhook endpoint: where it is, the entry kinds it wants (empty: all), how far it
    has acknowledged the feed, and the batch it is being sent, if any."""

    name: str
    url: str
    kinds: frozenset[str]
    created: str
    cursor: int
    tree_size: int
    secret_check: str
    batch: PendingBatch | None = None

    def check_secret(self, secret: str, home: object) -> str:
        """`secret` if it is the one this endpoint was added with; SigningKeyError if not
        (a HOME whose `secrets/webhooks.bin` is not the adding host's)."""
        if not hmac.compare_digest(secret_check(secret), self.secret_check):
            raise SigningKeyError(
                f"HOME {home} derives another signing secret for webhook {self.name!r} than "
                "the one it was added with: copy secrets/webhooks.bin from the HOME that "
                "added it"
            )
        return secret

    @property
    def lag(self) -> int:
        """Entries of the log not yet delivered through (of any kind)."""
        return max(0, self.tree_size - self.cursor)

    def to_json(self) -> dict[str, Any]:
        batch = self.batch
        return {
            "name": self.name,
            "url": self.url,
            "events": sorted(self.kinds),
            "created": self.created,
            "cursor": self.cursor,
            "lag": self.lag,
            "last_error": batch.last_error if batch else None,
            "next_attempt": batch.next_attempt if batch else None,
            "pending": batch.to_json() if batch else None,
        }


def secret_check(secret: str) -> str:
    """A check value of a signing secret that reveals nothing of it (a truncated HMAC
    under the secret), stored to catch a process deriving a different secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, b"consent-ledger webhook secret check", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode("ascii")


def webhook_id(endpoint: str, first_seq: int, last_seq: int) -> str:
    """`<endpoint>.<first seq>-<last seq>`: unique per batch, readable in a receiver's logs."""
    return f"{endpoint}.{first_seq}-{last_seq}"


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput("must be 1-64 characters: letters, digits and . _ -", field="name")
    return name


def validate_url(url: str) -> str:
    """An absolute http(s) URL with a host; anything else cannot be delivered to."""
    if not isinstance(url, str) or len(url) > MAX_URL or any(c.isspace() for c in url):
        raise InvalidInput(f"must be an http(s) URL of at most {MAX_URL} characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"not a URL: {exc}", field="url") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"must be http:// or https://, not {url!r}", field="url")
    if not parts.hostname:
        raise InvalidInput(f"has no host: {url!r}", field="url")
    if port == 0:
        raise InvalidInput("port 0 cannot be delivered to", field="url")
    return url


def validate_kinds(kinds: Sequence[str]) -> frozenset[str]:
    """The entry kinds an endpoint wants; none: every kind."""
    unknown = sorted(kind for kind in kinds if kind not in KINDS)
    if unknown:
        raise InvalidInput(
            f"unknown event kind {unknown[0]!r}; kinds are {', '.join(sorted(KINDS))}",
            field="events",
        )
    return frozenset(kinds)


def _now_ms(engine: Engine) -> ColumnElement[Any]:
    """The database's clock in milliseconds since the epoch, as a SQL expression."""
    if engine.dialect.name == "postgresql":
        return literal_column("CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)")
    return literal_column("CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)")


class WebhookStore:
    """The webhook endpoints, their cursors and batches, and the deliverer's lease."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # --- endpoints -----------------------------------------------------------------------

    def add(
        self,
        name: str,
        url: str,
        kinds: Sequence[str],
        secret: Callable[[str, str], str],
        *,
        after: int | None = None,
    ) -> Endpoint:
        """Add an endpoint that will be sent the events from tree size `after` on
        (default: from now, the current tree size); `secret(name, created)` is its
        signing secret, of which only a check value is stored."""
        validate_name(name)
        validate_url(url)
        wanted = validate_kinds(kinds)
        created = format_timestamp(utc_now())
        check = secret_check(secret(name, created))
        with state_session(self._engine) as session:
            size = log.tree_size(session)
            cursor = size if after is None else after
            if isinstance(cursor, bool) or not 0 <= cursor <= size:
                raise InvalidInput(f"must be a tree size from 0 to {size}", field="after")
            if session.get(WebhookEndpoint, name) is not None:
                raise Conflict(f"a webhook endpoint named {name!r} already exists")
            session.execute(
                insert(WebhookEndpoint).values(
                    name=name,
                    url=url,
                    kinds=",".join(sorted(wanted)),
                    created=created,
                    secret_check=check,
                    cursor=cursor,
                )
            )
        return Endpoint(name, url, wanted, created, cursor, size, check)

    def list_all(self) -> list[Endpoint]:
        """Every endpoint, by name, with its pending batch and the tree size now."""
        with read_session(self._engine) as session:
            size = log.tree_size(session)
            rows = session.execute(
                select(WebhookEndpoint, WebhookBatch)
                .outerjoin(WebhookBatch, col(WebhookBatch.endpoint) == col(WebhookEndpoint.name))
                .order_by(col(WebhookEndpoint.name))
            ).all()
            return [_endpoint(row, batch, size) for row, batch in rows]

    def names(self) -> list[str]:
        with read_session(self._engine) as session:
            return list(
                session.scalars(
                    select(col(WebhookEndpoint.name)).order_by(col(WebhookEndpoint.name))
                )
            )

    def get(self, name: str) -> Endpoint:
        endpoint = self.find(name)
        if endpoint is None:
            raise NotFound(f"no webhook endpoint named {name!r}")
        return endpoint

    def find(self, name: str) -> Endpoint | None:
        with read_session(self._engine) as session:
            row = session.get(WebhookEndpoint, name)
            if row is None:
                return None
            return _endpoint(row, session.get(WebhookBatch, name), log.tree_size(session))

    def remove(self, name: str) -> None:
        """Forget an endpoint and its pending batch (a delivery in flight may still land)."""
        with state_session(self._engine) as session:
            removed = session.execute(
                delete(WebhookEndpoint).where(col(WebhookEndpoint.name) == name)
            )
            if removed.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFound(f"no webhook endpoint named {name!r}")
            session.execute(delete(WebhookBatch).where(col(WebhookBatch.endpoint) == name))

    # --- batches and cursors -------------------------------------------------------------

    def open_batch(
        self, name: str, from_cursor: int, first_seq: int, last_seq: int, next_cursor: int
    ) -> PendingBatch | None:
        """Fix the bounds of the endpoint's next batch, unless they already are: the
        pending batch (this one or one fixed before), or None if the endpoint is gone or
        its cursor has moved from `from_cursor`."""
        with state_session(self._engine) as session:
            endpoint = session.get(WebhookEndpoint, name)
            if endpoint is None or endpoint.cursor != from_cursor:
                return None
            existing = session.get(WebhookBatch, name)
            if existing is not None:
                if existing.from_cursor == from_cursor:
                    return _batch(existing)
                # Left behind by a cursor that moved without it: never the case unless
                # the rows were edited by hand; the cursor is what counts.
                session.delete(existing)
                session.flush()
            row = WebhookBatch(
                endpoint=name,
                from_cursor=from_cursor,
                first_seq=first_seq,
                last_seq=last_seq,
                next_cursor=next_cursor,
                created=format_timestamp(utc_now()),
                attempts=0,
            )
            batch = _batch(row)
            session.add(row)
        return batch

    def drop_batch(self, batch: PendingBatch) -> None:
        """Forget a pending batch, so that the next one is formed afresh from the cursor."""
        with state_session(self._engine) as session:
            session.execute(
                delete(WebhookBatch).where(
                    col(WebhookBatch.endpoint) == batch.endpoint,
                    col(WebhookBatch.from_cursor) == batch.from_cursor,
                )
            )

    def advance(self, name: str, from_cursor: int, next_cursor: int) -> bool:
        """Move the endpoint's cursor from `from_cursor` to `next_cursor` (its batch there
        acknowledged, or no event of its kinds there) and drop that batch; False if the
        cursor was no longer `from_cursor` (another deliverer moved it) or the endpoint
        is gone."""
        with state_session(self._engine) as session:
            moved = session.execute(
                update(WebhookEndpoint)
                .where(
                    col(WebhookEndpoint.name) == name, col(WebhookEndpoint.cursor) == from_cursor
                )
                .values(cursor=next_cursor)
            )
            session.execute(
                delete(WebhookBatch).where(
                    col(WebhookBatch.endpoint) == name,
                    col(WebhookBatch.from_cursor) == from_cursor,
                )
            )
            return bool(moved.rowcount)  # type: ignore[attr-defined]

    def record_failure(
        self, batch: PendingBatch, error: str, next_attempt: datetime
    ) -> PendingBatch | None:
        """Note a failed attempt of `batch` and when to try again; the batch as it is now,
        or None if it is no longer pending."""
        now = format_timestamp(utc_now())
        with state_session(self._engine) as session:
            row = session.get(WebhookBatch, batch.endpoint)
            if row is None or row.from_cursor != batch.from_cursor:
                return None
            values = {
                "attempts": row.attempts + 1,
                "first_failure": row.first_failure or now,
                "next_attempt": format_timestamp(next_attempt),
                "last_error": error[:MAX_ERROR],
            }
            session.execute(
                update(WebhookBatch)
                .where(
                    col(WebhookBatch.endpoint) == batch.endpoint,
                    col(WebhookBatch.from_cursor) == batch.from_cursor,
                )
                .values(**values)
            )
            session.flush()
            session.refresh(row)
            return _batch(row)

    # --- the deliverer's lease -----------------------------------------------------------

    def take_lease(self, holder: str, seconds: float) -> bool:
        """Take or renew the deliverer's lease for `seconds` (by the database's clock):
        True if `holder` has it now, False if another holder's has not yet expired."""
        now = _now_ms(self._engine)
        with state_session(self._engine) as session:
            taken = session.execute(
                update(WebhookLease)
                .where(
                    col(WebhookLease.id) == 1,
                    (col(WebhookLease.holder) == holder)
                    | col(WebhookLease.holder).is_(None)
                    | (col(WebhookLease.expires) < now),
                )
                .values(holder=holder, expires=now + int(seconds * 1000))
            )
            return bool(taken.rowcount)  # type: ignore[attr-defined]

    def release_lease(self, holder: str) -> None:
        """Give the lease up, if `holder` has it, so that another process takes over now."""
        with state_session(self._engine) as session:
            session.execute(
                update(WebhookLease)
                .where(col(WebhookLease.id) == 1, col(WebhookLease.holder) == holder)
                .values(holder=None, expires=0)
            )

    def lease_holder(self) -> str | None:
        """Who holds an unexpired lease now, if anyone."""
        now = _now_ms(self._engine)
        with read_session(self._engine) as session:
            holder: str | None = session.execute(
                select(col(WebhookLease.holder)).where(
                    col(WebhookLease.id) == 1, col(WebhookLease.expires) >= now
                )
            ).scalar()
            return holder


def _batch(row: WebhookBatch) -> PendingBatch:
    return PendingBatch(
        endpoint=row.endpoint,
        from_cursor=row.from_cursor,
        first_seq=row.first_seq,
        last_seq=row.last_seq,
        next_cursor=row.next_cursor,
        created=row.created,
        attempts=row.attempts,
        first_failure=row.first_failure,
        next_attempt=row.next_attempt,
        last_error=row.last_error,
    )


def _endpoint(row: WebhookEndpoint, batch: WebhookBatch | None, size: int) -> Endpoint:
    return Endpoint(
        name=row.name,
        url=row.url,
        kinds=frozenset(kind for kind in row.kinds.split(",") if kind),
        created=row.created,
        cursor=row.cursor,
        tree_size=size,
        secret_check=row.secret_check,
        batch=_batch(batch) if batch is not None and batch.from_cursor == row.cursor else None,
    )
