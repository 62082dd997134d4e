"""The key the log's checkpoints are signed with, checked against the log, and local secrets.

Keys and secrets live in files under HOME (`ledger.service.keys`); this part
knows which key the log expects, finishes rotations a crash interrupted, and
stages the keys that `init` and `keys rotate` announce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from sqlalchemy import Engine

from ledger.errors import Conflict, SigningKeyError
from ledger.service.keys import KeyStore, SigningKey
from ledger.settings import Settings
from ledger.store.db import read_session
from ledger.tlog import log

ERASURE_SECRET = "erasure"
WEBHOOK_SECRET = "webhooks"


class Signer:
    """Loads, stages and rotates the signing key; hands out the erasure and webhook secrets."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._home = settings.home
        self._keys = KeyStore(settings.home, settings.passphrase)
        self._key: SigningKey | None = None

    def signing_key(self) -> SigningKey:
        """The current key, checked against the log's latest announced key."""
        if self._key is not None:
            return self._key
        with read_session(self._engine) as session:
            expected = log.current_verifier_key(session)
        return self.reload(expected)

    def for_log(self, expected: str) -> SigningKey:
        """The key for a log whose latest announced key is `expected` (rotated elsewhere?)."""
        signer = self.signing_key()
        if str(signer.verifier_key) != expected:
            signer = self.reload(expected)
        return signer

    def reload(self, expected: str) -> SigningKey:
        """Load the key from HOME again; it must be `expected`, the log's latest."""
        self._key = None
        staged = self._keys.staged()
        if staged is not None:
            # Finish (or forget) a rotation or init that stopped between the
            # commit that announced the key and the promotion of its file.
            if str(staged.verifier_key) == expected:
                self._keys.promote_staged()
            else:
                self._keys.discard_staged()
        key = self._keys.current()
        if str(key.verifier_key) != expected:
            raise SigningKeyError(
                f"the signing key in {self._home} ({key.verifier_key}) is not the key "
                f"this ledger announced last ({expected})"
            )
        self._key = key
        return key

    def verifier_key(self) -> str:
        """The verifier key the log announced last."""
        with read_session(self._engine) as session:
            return log.current_verifier_key(session)

    def stage_first(self, origin: str) -> SigningKey:
        """The first key of a new log, staged until the log that names it has committed."""
        if self._keys.exists():
            raise Conflict(
                f"a signing key already exists in {self._home}; refusing to overwrite it"
            )
        return self._keys.stage(origin)

    def stage_next(self) -> SigningKey:
        """The next key of a rotation, staged until the entry announcing it has committed."""
        return self._keys.stage(self.signing_key().name)

    def promote(self, key: SigningKey) -> None:
        """`key`, staged and now announced in a committed entry, becomes the current key."""
        self._keys.promote_staged()
        self._key = key

    def erasure_secret(self) -> bytes:
        """The secret erased subject ids are hashed with (kept in HOME, never in the database)."""
        return self._keys.secret(ERASURE_SECRET)

    def webhook_secret(self, endpoint: str, created: str) -> str:
        """The signing secret of the webhook endpoint `endpoint` added at `created`
        (Standard Webhooks form, `whsec_` + base64 of 32 bytes).

        Derived, never stored: HMAC-SHA256 under a secret in HOME of the endpoint's name
        and creation time, so every instance that shares HOME signs alike, a database dump
        reveals none, and removing and adding an endpoint again gives it a new secret.
        """
        message = f"webhook:{endpoint}:{created}".encode()
        derived = hmac.new(self._keys.secret(WEBHOOK_SECRET), message, hashlib.sha256).digest()
        return "whsec_" + base64.b64encode(derived).decode("ascii")
