"""Tests for signing keys and secrets on disk (`ledger.service.keys`)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.errors import Conflict, InvalidInput, NotFound, SigningKeyError
from ledger.service.keys import KeyStore, SigningKey
from ledger.tlog.notes import NoteSigner, key_id, sign_note, verify_note

ORIGIN = "example.com/log"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    # Not yet created: the store must create it, with the right mode.
    return tmp_path / "ledger-home"


@pytest.fixture
def store(home: Path) -> KeyStore:
    return KeyStore(home)


@pytest.fixture(params=[0o000, 0o022, 0o077], ids=["umask-000", "umask-022", "umask-077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    value: int = request.param
    previous = os.umask(value)
    try:
        yield value
    finally:
        os.umask(previous)


# --- SigningKey -------------------------------------------------------------------


def test_generated_key_signs_notes_that_verify() -> None:
    key = SigningKey.generate(ORIGIN)
    signer: NoteSigner = key
    _, verified = verify_note(sign_note("hello\n", [signer]), [key.verifier_key])
    assert verified == [key.verifier_key]


def test_key_id_is_derived_from_name_and_public_key() -> None:
    key = SigningKey.generate(ORIGIN)
    assert key.key_id == key_id(ORIGIN, key.public_key_bytes)
    assert key.verifier_key.public_key == key.public_key_bytes
    assert len(key.public_key_bytes) == 32


def test_key_repr_shows_only_the_public_key() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    key = SigningKey(ORIGIN, private)
    seed = private.private_bytes_raw()
    assert seed.hex() not in repr(key)
    assert str(key.verifier_key) in repr(key)


@pytest.mark.parametrize("name", ["", "has space", "has+plus"])
def test_key_with_an_invalid_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        SigningKey.generate(name)


# --- current key ------------------------------------------------------------------


def test_created_key_is_loaded_back_as_current(store: KeyStore) -> None:
    assert not store.exists()
    created = store.create(ORIGIN)
    assert store.exists()
    loaded = store.current()
    assert loaded.verifier_key == created.verifier_key
    assert created.verifier_key.verify(b"m", loaded.sign(b"m"))


def test_creating_a_second_key_is_a_conflict(store: KeyStore) -> None:
    first = store.create(ORIGIN)
    with pytest.raises(Conflict, match="already exists"):
        store.create(ORIGIN)
    assert store.current().verifier_key == first.verifier_key


def test_missing_key_is_a_clear_error(store: KeyStore) -> None:
    with pytest.raises(SigningKeyError, match="no signing key"):
        store.current()


def test_files_are_0600_and_directories_0700_whatever_the_umask(home: Path, umask: int) -> None:
    store = KeyStore(home)
    store.create(ORIGIN)
    store.stage(ORIGIN)
    store.secret("subject-erasure")
    store.promote_staged()
    assert _mode(home) == 0o700
    for directory in (home / "keys", home / "keys" / "retired", home / "secrets"):
        assert _mode(directory) == 0o700, directory
    files = [path for path in home.rglob("*") if path.is_file()]
    assert len(files) == 3  # current, one retired key, one secret
    for path in files:
        assert _mode(path) == 0o600, path


def test_no_temporary_files_are_left_behind(store: KeyStore, home: Path) -> None:
    store.create(ORIGIN)
    store.stage(ORIGIN)
    store.stage(ORIGIN)
    store.secret("a")
    store.secret("a")
    assert not [path for path in home.rglob("*") if path.name.endswith(".tmp")]


def test_existing_home_directory_permissions_are_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    KeyStore(tmp_path).create(ORIGIN)
    assert _mode(tmp_path) == 0o755
    assert _mode(tmp_path / "keys") == 0o700


def test_unencrypted_key_file_is_plain_pkcs8_after_a_verifier_line(
    store: KeyStore, home: Path
) -> None:
    key = store.create(ORIGIN)
    lines = (home / "keys" / "signing.pem").read_text().splitlines()
    assert lines[0] == f"verifier-key: {key.verifier_key}"
    assert lines[1] == "-----BEGIN PRIVATE KEY-----"


def test_key_file_whose_verifier_line_does_not_match_is_refused(
    store: KeyStore, home: Path
) -> None:
    store.create(ORIGIN)
    other = SigningKey.generate(ORIGIN)
    path = home / "keys" / "signing.pem"
    _, rest = path.read_text().split("\n", 1)
    path.write_text(f"verifier-key: {other.verifier_key}\n{rest}")
    with pytest.raises(SigningKeyError, match="does not match"):
        store.current()


def test_key_file_without_a_verifier_line_is_refused(store: KeyStore, home: Path) -> None:
    store.create(ORIGIN)
    path = home / "keys" / "signing.pem"
    path.write_text(path.read_text().split("\n", 1)[1])
    with pytest.raises(SigningKeyError, match="no 'verifier-key:' line"):
        store.current()


# --- passphrases ------------------------------------------------------------------


def test_passphrase_encrypts_the_key_file(home: Path) -> None:
    KeyStore(home, "correct horse").create(ORIGIN)
    data = (home / "keys" / "signing.pem").read_text()
    assert "-----BEGIN ENCRYPTED PRIVATE KEY-----" in data
    assert "-----BEGIN PRIVATE KEY-----" not in data


def test_encrypted_key_loads_with_the_passphrase(home: Path) -> None:
    created = KeyStore(home, "correct horse").create(ORIGIN)
    assert KeyStore(home, "correct horse").current().verifier_key == created.verifier_key


def test_encrypted_key_without_passphrase_names_the_environment_variable(home: Path) -> None:
    KeyStore(home, "correct horse").create(ORIGIN)
    with pytest.raises(SigningKeyError, match="encrypted: set CONSENT_LEDGER_KEY_PASSPHRASE"):
        KeyStore(home).current()


def test_encrypted_key_with_wrong_passphrase_says_so(home: Path) -> None:
    KeyStore(home, "correct horse").create(ORIGIN)
    with pytest.raises(SigningKeyError, match="wrong passphrase") as info:
        KeyStore(home, "battery staple").current()
    assert "correct horse" not in str(info.value)


def test_public_half_is_readable_without_the_passphrase(home: Path) -> None:
    created = KeyStore(home, "correct horse").create(ORIGIN)
    assert KeyStore(home).current_verifier_key() == created.verifier_key


def test_passphrase_for_an_unencrypted_key_is_refused(home: Path) -> None:
    KeyStore(home).create(ORIGIN)
    with pytest.raises(SigningKeyError, match="not encrypted"):
        KeyStore(home, "correct horse").current()


def test_empty_passphrase_is_refused(home: Path) -> None:
    with pytest.raises(InvalidInput, match="passphrase"):
        KeyStore(home, "")


# --- rotation ---------------------------------------------------------------------


def test_nothing_is_staged_initially(store: KeyStore) -> None:
    store.create(ORIGIN)
    assert store.staged() is None


def test_staging_replaces_a_previously_staged_key(store: KeyStore) -> None:
    store.create(ORIGIN)
    first = store.stage(ORIGIN)
    second = store.stage(ORIGIN)
    staged = store.staged()
    assert staged is not None
    assert staged.verifier_key == second.verifier_key != first.verifier_key


def test_discarding_removes_the_staged_key_and_is_idempotent(store: KeyStore) -> None:
    current = store.create(ORIGIN)
    store.stage(ORIGIN)
    store.discard_staged()
    store.discard_staged()
    assert store.staged() is None
    assert store.current().verifier_key == current.verifier_key


def test_promoting_makes_the_staged_key_current_and_retires_the_old_one(
    store: KeyStore, home: Path
) -> None:
    old = store.create(ORIGIN)
    new = store.stage(ORIGIN)
    store.promote_staged()
    assert store.current().verifier_key == new.verifier_key
    assert store.staged() is None
    assert (home / "keys" / "retired" / f"{old.key_id.hex()}.pem").is_file()
    assert store.retired() == [old.verifier_key]


def test_note_signed_before_rotation_verifies_with_the_retired_key(store: KeyStore) -> None:
    old = store.create(ORIGIN)
    note = sign_note("size 5\n", [old])
    store.stage(ORIGIN)
    store.promote_staged()
    _, verified = verify_note(note, store.retired())
    assert verified == [old.verifier_key]


def test_promoting_with_nothing_staged_is_not_found(store: KeyStore) -> None:
    store.create(ORIGIN)
    with pytest.raises(NotFound, match="no staged"):
        store.promote_staged()


def test_promoting_without_a_current_key_makes_the_staged_key_current(store: KeyStore) -> None:
    # `init` stages the first key and promotes it once the log announcing it
    # has committed.
    staged = store.stage(ORIGIN)
    assert not store.exists()
    store.promote_staged()
    assert store.current().verifier_key == staged.verifier_key
    assert store.staged() is None
    assert store.retired() == []


def test_promoting_the_first_key_does_not_clobber_one_created_meanwhile(
    store: KeyStore, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.stage(ORIGIN)
    staged_path = home / "keys" / "staged.pem"
    created: list[SigningKey] = []
    real_load = KeyStore._load

    def load_then_race(self: KeyStore, path: Path) -> SigningKey:
        key = real_load(self, path)
        if path == staged_path and not created:
            created.append(store.create(ORIGIN))
        return key

    monkeypatch.setattr(KeyStore, "_load", load_then_race)
    with pytest.raises(Conflict, match="meanwhile"):
        store.promote_staged()
    monkeypatch.undo()
    assert store.current().verifier_key == created[0].verifier_key


def test_promotion_with_the_wrong_passphrase_moves_nothing(home: Path) -> None:
    old = KeyStore(home, "correct horse").create(ORIGIN)
    KeyStore(home, "correct horse").stage(ORIGIN)
    with pytest.raises(SigningKeyError, match="wrong passphrase"):
        KeyStore(home, "battery staple").promote_staged()
    store = KeyStore(home, "correct horse")
    assert store.current().verifier_key == old.verifier_key
    assert store.staged() is not None
    assert store.retired() == []


# --- secrets ----------------------------------------------------------------------


def test_secret_is_created_once_and_stable_across_stores(home: Path) -> None:
    first = KeyStore(home).secret("subject-erasure")
    assert len(first) == 32
    assert KeyStore(home).secret("subject-erasure") == first
    assert KeyStore(home, "a passphrase").secret("subject-erasure") == first


def test_secrets_for_different_purposes_differ(store: KeyStore) -> None:
    assert store.secret("one") != store.secret("two")


def test_secret_has_the_requested_size(store: KeyStore) -> None:
    assert len(store.secret("wide", size=64)) == 64


def test_secret_asked_for_with_another_size_is_a_conflict(store: KeyStore) -> None:
    store.secret("subject-erasure")
    with pytest.raises(Conflict, match="32 bytes"):
        store.secret("subject-erasure", size=64)


@pytest.mark.parametrize("purpose", ["", "../escape", "a/b", "Upper", ".hidden", "x" * 65])
def test_secret_purpose_must_be_a_safe_file_name(store: KeyStore, purpose: str) -> None:
    with pytest.raises(InvalidInput, match="purpose"):
        store.secret(purpose)


@pytest.mark.parametrize("size", [0, 8, 2048])
def test_secret_size_must_be_reasonable(store: KeyStore, size: int) -> None:
    with pytest.raises(InvalidInput, match="size"):
        store.secret("x", size=size)
