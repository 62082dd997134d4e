"""Ed25519 signing keys and local secrets, kept in files under a home directory.

Private keys never go into the database: a database dump or replica must not
be enough to forge checkpoints. Nothing here logs or prints key material, and
`SigningKey`'s repr shows only the public verifier key.

Layout under ``home`` (directories 0700, files 0600)::

    keys/signing.pem            the current key
    keys/staged.pem             the next key, during a rotation
    keys/retired/<key ID>.pem   keys that have been rotated out
    secrets/<purpose>.bin       random secrets, e.g. for hashing erased subject IDs

Each key file is PKCS#8 PEM, encrypted with the passphrase if one is set,
preceded by a ``verifier-key:`` line. RFC 7468 lets text precede a PEM block;
the line records the key's name (PKCS#8 has nowhere for it) and lets the
public key be read without the passphrase.

Every write goes to a temporary file in the same directory, is fsynced and is
then renamed into place, followed by an fsync of the directory, so a crash
leaves either the old file or the new one and never a torn key.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.errors import Conflict, InvalidInput, NotFound, SigningKeyError
from ledger.tlog.notes import KeyID, VerifierKey, key_id, validate_key_name

__all__ = ["PASSPHRASE_ENV", "KeyStore", "SigningKey"]

PASSPHRASE_ENV = "CONSENT_LEDGER_KEY_PASSPHRASE"
VERIFIER_HEADER = "verifier-key: "
DIR_MODE = 0o700
FILE_MODE = 0o600
MIN_SECRET_SIZE = 16
MAX_SECRET_SIZE = 1024
# Purposes become file names, so they are limited to characters that are safe
# in every file system and cannot climb out of the secrets directory.
_PURPOSE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.ASCII)


class SigningKey:
    """An Ed25519 private key and the note-key name it signs under.

    Implements `ledger.tlog.notes.NoteSigner`.
    """

    __slots__ = ("_key_id", "_name", "_private_key", "_public_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise InvalidInput("signing key must be an Ed25519 private key", field="private_key")
        self._name = validate_key_name(name)
        self._private_key = private_key
        self._public_key = private_key.public_key().public_bytes_raw()
        self._key_id = key_id(name, self._public_key)

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        """A fresh random key named `name`."""
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> KeyID:
        return self._key_id

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public_key

    @property
    def verifier_key(self) -> VerifierKey:
        return VerifierKey(self._name, self._key_id, self._public_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message`."""
        return self._private_key.sign(message)

    def __repr__(self) -> str:
        # Only the public half: reprs end up in logs and tracebacks.
        return f"SigningKey({str(self.verifier_key)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SigningKey):
            return NotImplemented
        return self.verifier_key == other.verifier_key

    def __hash__(self) -> int:
        return hash(self.verifier_key)

    def _to_pem(self, passphrase: str | None) -> bytes:
        encryption: serialization.KeySerializationEncryption
        if passphrase is None:
            encryption = serialization.NoEncryption()
        else:
            encryption = serialization.BestAvailableEncryption(passphrase.encode("utf-8"))
        pem = self._private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        return f"{VERIFIER_HEADER}{self.verifier_key}\n".encode() + pem


class KeyStore:
    """The signing keys (current, staged, retired) and secrets under `home`.

    `passphrase`, if given, encrypts keys written from now on and is needed to
    load encrypted ones. Secrets are not encrypted: they are only as sensitive
    as the home directory's permissions make them.
    """

    def __init__(self, home: Path, passphrase: str | None = None) -> None:
        if passphrase is not None and not passphrase:
            # An empty passphrase would "encrypt" with nothing; refusing it
            # catches an exported-but-empty environment variable.
            raise InvalidInput("passphrase must not be empty", field="passphrase")
        self.home = Path(home)
        self._passphrase = passphrase

    def __repr__(self) -> str:
        encrypted = "encrypted" if self._passphrase is not None else "unencrypted"
        return f"KeyStore({str(self.home)!r}, {encrypted})"

    # Paths ---------------------------------------------------------------

    @property
    def _keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def _current_path(self) -> Path:
        return self._keys_dir / "signing.pem"

    @property
    def _staged_path(self) -> Path:
        return self._keys_dir / "staged.pem"

    @property
    def _retired_dir(self) -> Path:
        return self._keys_dir / "retired"

    @property
    def _secrets_dir(self) -> Path:
        return self.home / "secrets"

    # Keys ----------------------------------------------------------------

    def exists(self) -> bool:
        """Whether a current signing key is present (it may still be locked)."""
        return self._current_path.is_file()

    def create(self, name: str) -> SigningKey:
        """Generate the current signing key; `Conflict` if there already is one."""
        key = SigningKey.generate(name)
        _make_dirs(self.home, self._keys_dir)
        if not _write_file(self._current_path, key._to_pem(self._passphrase), replace=False):
            raise Conflict(f"a signing key already exists at {self._current_path}")
        return key

    def current(self) -> SigningKey:
        """Load the current signing key."""
        if not self._current_path.is_file():
            raise SigningKeyError(
                f"no signing key at {self._current_path}: run `consent-ledger init`"
            )
        return self._load(self._current_path)

    def current_verifier_key(self) -> VerifierKey:
        """The current key's public half, readable without the passphrase."""
        if not self._current_path.is_file():
            raise SigningKeyError(f"no signing key at {self._current_path}")
        return _read_verifier_key(self._current_path)

    def stage(self, name: str) -> SigningKey:
        """Generate the next key for a rotation, replacing any staged before."""
        key = SigningKey.generate(name)
        _make_dirs(self.home, self._keys_dir)
        _write_file(self._staged_path, key._to_pem(self._passphrase), replace=True)
        return key

    def staged(self) -> SigningKey | None:
        """The staged key, or None if no rotation is in progress."""
        if not self._staged_path.is_file():
            return None
        return self._load(self._staged_path)

    def promote_staged(self) -> None:
        """Make the staged key current and retire the current one, if any.

        The current key is first copied to ``retired/<key ID>.pem``, then the
        staged file is renamed over it. There is a current key at every
        instant, and a crash in between leaves a state where promoting again
        finishes the job.

        With no current key (``init`` stages the first key and promotes it
        once the log that announces it has committed) the staged key simply
        becomes current.
        """
        if not self._staged_path.is_file():
            raise NotFound("no staged signing key to promote")
        if not self._current_path.is_file():
            self._load(self._staged_path)
            # No-clobber: a key created meanwhile by `create` must not be
            # silently replaced.
            try:
                if not _publish(self._staged_path, self._current_path):
                    raise Conflict(f"a signing key appeared at {self._current_path} meanwhile")
                self._staged_path.unlink()
            except _NoHardLinks:
                os.replace(self._staged_path, self._current_path)
            _fsync_dir(self._keys_dir)
            return
        # Loading both proves the passphrase opens them before anything moves.
        staged = self._load(self._staged_path)
        current = self._load(self._current_path)
        if staged.verifier_key == current.verifier_key:
            raise Conflict("the staged key is already the current key")
        _make_dirs(self._retired_dir)
        retired_path = self._retired_dir / f"{current.key_id.hex()}.pem"
        data = self._current_path.read_bytes()
        if not _write_file(retired_path, data, replace=False) and (
            retired_path.read_bytes() != data
        ):
            raise Conflict(f"{retired_path} already holds a different key")
        os.replace(self._staged_path, self._current_path)
        _fsync_dir(self._keys_dir)

    def discard_staged(self) -> None:
        """Delete the staged key, if any."""
        with contextlib.suppress(FileNotFoundError):
            self._staged_path.unlink()
            _fsync_dir(self._keys_dir)

    def retired(self) -> list[VerifierKey]:
        """The public halves of retired keys, to verify old checkpoints with."""
        if not self._retired_dir.is_dir():
            return []
        return [_read_verifier_key(path) for path in sorted(self._retired_dir.glob("*.pem"))]

    def _load(self, path: Path) -> SigningKey:
        data = _read_key_file(path)
        expected = _parse_header(data, path)
        password = None if self._passphrase is None else self._passphrase.encode("utf-8")
        try:
            private_key = serialization.load_pem_private_key(data, password=password)
        except TypeError:
            # cryptography signals a missing or superfluous password with
            # TypeError and a bad one with ValueError.
            if password is None:
                raise SigningKeyError(
                    f"signing key {path} is encrypted: set {PASSPHRASE_ENV}"
                ) from None
            raise SigningKeyError(
                f"signing key {path} is not encrypted but a passphrase was given; "
                f"unset {PASSPHRASE_ENV} or re-encrypt the key"
            ) from None
        except ValueError:
            if password is not None and b"ENCRYPTED PRIVATE KEY" in data:
                raise SigningKeyError(
                    f"wrong passphrase for signing key {path} (check {PASSPHRASE_ENV})"
                ) from None
            # `from None`: the underlying error may quote parts of the file.
            raise SigningKeyError(f"signing key {path} is not a readable PEM key") from None
        if not isinstance(private_key, Ed25519PrivateKey):
            raise SigningKeyError(f"signing key {path} is not an Ed25519 key")
        key = SigningKey(expected.name, private_key)
        if key.verifier_key != expected:
            raise SigningKeyError(
                f"signing key {path} does not match its verifier-key line {expected}"
            )
        return key

    # Secrets -------------------------------------------------------------

    def secret(self, purpose: str, size: int = 32) -> bytes:
        """A random secret for `purpose`, created on first use and stable after.

        Two processes racing to create it agree: the file is published with a
        no-clobber link, and the loser reads the winner's value.
        """
        if not isinstance(purpose, str) or not _PURPOSE.fullmatch(purpose):
            raise InvalidInput(
                "purpose must be 1-64 characters of a-z, 0-9, '_' and '-'", field="purpose"
            )
        if isinstance(size, bool) or not MIN_SECRET_SIZE <= size <= MAX_SECRET_SIZE:
            raise InvalidInput(
                f"secret size must be {MIN_SECRET_SIZE}-{MAX_SECRET_SIZE} bytes", field="size"
            )
        path = self._secrets_dir / f"{purpose}.bin"
        if not path.exists():
            _make_dirs(self.home, self._secrets_dir)
            _write_file(path, secrets.token_bytes(size), replace=False)
        value = path.read_bytes()
        if len(value) != size:
            raise Conflict(f"secret {path} is {len(value)} bytes, not the {size} asked for")
        return value


# --- files ----------------------------------------------------------------------


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read signing key {path}: {exc.strerror}") from None


def _parse_header(data: bytes, path: Path) -> VerifierKey:
    first, _, _ = data.partition(b"\n")
    try:
        line = first.decode("ascii")
    except UnicodeDecodeError:
        line = ""
    if not line.startswith(VERIFIER_HEADER):
        raise SigningKeyError(f"signing key {path} has no '{VERIFIER_HEADER.strip()}' line")
    try:
        return VerifierKey.parse(line[len(VERIFIER_HEADER) :])
    except InvalidInput as exc:
        raise SigningKeyError(f"signing key {path}: bad verifier-key line: {exc}") from None


def _read_verifier_key(path: Path) -> VerifierKey:
    return _parse_header(_read_key_file(path), path)


def _make_dirs(*directories: Path) -> None:
    """Create each directory (and parents) with mode 0700 if it does not exist."""
    for directory in directories:
        if directory.is_dir():
            continue
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask; chmod states it exactly.
        directory.chmod(DIR_MODE)
        _fsync_dir(directory.parent)


def _write_file(path: Path, data: bytes, *, replace: bool) -> bool:
    """Atomically write `data` to `path` with mode 0600.

    With ``replace=False`` an existing file is left alone and False is
    returned; the no-clobber publish is a hard link, which fails atomically
    if the name is taken, so two writers cannot both win.
    """
    directory = path.parent
    temp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temp, flags, FILE_MODE)
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # the umask may have removed bits; be exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temp, path)
        else:
            try:
                if not _publish(temp, path):
                    return False
            except _NoHardLinks:
                # An exclusive create is still no-clobber, but a crash could
                # leave a partly written file, so it is only the fallback.
                return _write_exclusive(path, data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    _fsync_dir(directory)
    return True


class _NoHardLinks(Exception):
    pass


def _publish(source: Path, target: Path) -> bool:
    """Give `source`'s file the name `target` unless `target` exists (then False).

    A hard link fails atomically when the name is taken, which a rename
    (that replaces) and an exists-then-rename (that races) do not.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise _NoHardLinks from exc
        raise
    return True


def _write_exclusive(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    # A rename is durable only once the directory entry is; not every
    # platform lets a directory be opened for fsync, and that is not fatal.
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
