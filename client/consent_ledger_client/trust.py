"""The client's memory of the log: the latest checkpoint it has proven consistent.

Signatures alone show that the ledger's key signed a checkpoint; they do not
show that the log behind today's checkpoint extends the log behind
yesterday's. A server that rewrote history (or shows different clients
different histories) can still sign. So the client keeps the last checkpoint
it trusted and accepts another one only with an RFC 9162 consistency proof
between the two:

* newer (larger) checkpoint: proof trusted → new, then it becomes the trusted one;
* older (smaller) checkpoint: proof old → trusted (an old receipt must be a
  prefix of what we already trust);
* same size: the root hashes must be identical.

The trusted checkpoint is kept in memory and, with a trust store path, in a
file holding the signed note exactly as the server sent it, so the file is
also a checkpoint that `consent-ledger verify --checkpoint FILE` accepts.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from consent_ledger_client._kernel.errors import InvalidInput
from consent_ledger_client._kernel.errors import VerificationError as KernelVerificationError
from consent_ledger_client._kernel.tlog import merkle
from consent_ledger_client._kernel.tlog.notes import Checkpoint, Note, VerifierKey, open_checkpoint
from consent_ledger_client.errors import VerificationError

__all__ = ["ProofFetcher", "TrustedLog", "parse_verifier_keys"]

ProofFetcher = Callable[[int, int], Sequence[bytes]]
"""Returns the RFC 9162 consistency proof between two tree sizes (old, new)."""


class TrustedLog:
    """Verifies checkpoints against trusted keys and the last trusted checkpoint.

    `fetch_proof` is None when consistency is not checked (signatures only); the
    trusted checkpoint then never changes. Verification is serialised by a
    lock, so several threads sharing one client agree on what is trusted.
    """

    def __init__(
        self,
        keys: Sequence[VerifierKey],
        *,
        store: Path | None = None,
        fetch_proof: ProofFetcher | None = None,
    ) -> None:
        if not keys:
            raise ValueError("at least one trusted verifier key is needed")
        self.keys = tuple(keys)
        self.origins = frozenset(key.name for key in self.keys)
        self.store = Path(store) if store is not None else None
        self._fetch_proof = fetch_proof
        self._lock = threading.Lock()
        self._trusted: Checkpoint | None = None
        self._trusted_note: str | None = None
        if self.store is not None and self.store.exists():
            note = self.store.read_text(encoding="utf-8")
            try:
                self._trusted = self.open(note)
            except VerificationError as exc:
                raise VerificationError(
                    f"trust store {self.store} does not hold a checkpoint signed by a "
                    f"trusted key: {exc}",
                    subject="trust store",
                ) from exc
            self._trusted_note = note

    @property
    def trusted(self) -> Checkpoint | None:
        """The latest checkpoint proven consistent with everything seen before."""
        return self._trusted

    @property
    def trusted_note(self) -> str | None:
        """`trusted` as the signed note text the server sent."""
        return self._trusted_note

    @property
    def checks_consistency(self) -> bool:
        return self._fetch_proof is not None

    def open(self, note: str, *, claimed_key: str | None = None) -> Checkpoint:
        """Check the note's signature by a trusted key and that it is this log's."""
        try:
            checkpoint = open_checkpoint(note, self.keys)
        except KernelVerificationError as exc:
            message = str(exc.args[0])
            if claimed_key is not None and claimed_key not in {str(k) for k in self.keys}:
                message += (
                    f"; the server says it is signed by {claimed_key}. If the ledger "
                    "rotated its key, check the `key.added` entry and trust the new key too"
                )
            raise VerificationError(message, subject=exc.subject or "checkpoint") from exc
        except InvalidInput as exc:
            raise VerificationError(str(exc), subject="checkpoint") from exc
        if checkpoint.origin not in self.origins:
            raise VerificationError(
                f"checkpoint is for log {checkpoint.origin!r}, not {sorted(self.origins)}",
                subject="checkpoint",
            )
        return checkpoint

    def verify(self, note: str, *, claimed_key: str | None = None) -> Checkpoint:
        """Verify a signed checkpoint note; see `accept`."""
        return self.accept(self.open(note, claimed_key=claimed_key), note)

    def accept(
        self, checkpoint: Checkpoint, note: str, *, prefix: tuple[int, bytes] | None = None
    ) -> Checkpoint:
        """Check an already signature-verified checkpoint against the trusted one.

        The first checkpoint ever seen (no trust store yet) is trusted as it is:
        its signature is all there is to check. `prefix` is (size, root) of a
        prefix of the checkpoint's tree that the caller has already proven (a
        range proof of entries from `size` on holds the subtrees left of them,
        which fold into that prefix's root): when it is the trusted checkpoint,
        the new one extends it without a consistency proof to fetch.
        """
        if self._fetch_proof is None:
            return checkpoint
        with self._lock:
            trusted = self._trusted
            if trusted is None:
                self._remember(checkpoint, note)
            elif checkpoint.size == trusted.size:
                if checkpoint.root != trusted.root:
                    raise VerificationError(
                        f"two different roots for tree size {checkpoint.size}: the log forked "
                        "or was rewritten",
                        subject=f"checkpoint {checkpoint.size}",
                    )
            elif checkpoint.size > trusted.size:
                if prefix != (trusted.size, trusted.root):
                    self._prove(trusted, checkpoint)
                self._remember(checkpoint, note)
            else:
                self._prove(checkpoint, trusted)
        return checkpoint

    def _prove(self, old: Checkpoint, new: Checkpoint) -> None:
        assert self._fetch_proof is not None
        proof = self._fetch_proof(old.size, new.size)
        try:
            merkle.verify_consistency(old.size, new.size, old.root, new.root, list(proof))
        except (KernelVerificationError, InvalidInput) as exc:
            raise VerificationError(
                f"the log of size {new.size} is not an extension of the log of size "
                f"{old.size} (fork or rollback): {exc}",
                subject=f"checkpoint {new.size}",
            ) from exc

    def _remember(self, checkpoint: Checkpoint, note: str) -> None:
        self._trusted, self._trusted_note = checkpoint, note
        if self.store is not None:
            _write_atomically(self.store, note)


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` so that a crash leaves either the old or the new note, never half."""
    Note.parse(text)  # never persist something that is not a note
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def parse_verifier_keys(
    keys: str | VerifierKey | Sequence[str | VerifierKey],
) -> list[VerifierKey]:
    """The trust anchors: one verifier key or several (after a rotation), as text or parsed."""
    items: Sequence[str | VerifierKey] = [keys] if isinstance(keys, str | VerifierKey) else keys
    parsed = []
    for item in items:
        if isinstance(item, VerifierKey):
            parsed.append(item)
            continue
        try:
            parsed.append(VerifierKey.parse(item.strip()))
        except InvalidInput as exc:
            raise ValueError(f"not a verifier key: {exc}") from None
    if not parsed:
        raise ValueError("at least one verifier key is needed")
    return parsed
