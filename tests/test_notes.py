"""Tests for C2SP signed notes and tlog checkpoints (`ledger.tlog.notes`).

Known answers come from tests/vectors/signed-note.json (the C2SP spec
example, Go's sumdb/note test vector and a real sum.golang.org checkpoint), so
that interoperability is checked against other implementations' bytes and not
only against this one's.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InvalidInput, VerificationError
from ledger.service.keys import SigningKey
from ledger.tlog.notes import (
    Checkpoint,
    KeyID,
    Note,
    NoteSignature,
    VerifierKey,
    b64,
    key_id,
    open_checkpoint,
    parse_go_signer_key,
    sign_checkpoint,
    sign_note,
    unb64,
    validate_origin,
    verify_note,
)

EM_DASH = "\u2014"


def _vectors_dir() -> Path:
    override = os.environ.get("CONSENT_LEDGER_VECTORS")
    if override:
        return Path(override)
    # Vendored copies of the published vectors, so they run on every machine.
    return Path(__file__).resolve().parent / "vectors"


def _load_cases(keep: Callable[[dict[str, Any]], bool] = lambda case: True) -> list[Any]:
    """The vector cases that `keep` selects, as pytest params (a skip if absent)."""
    path = _vectors_dir() / "signed-note.json"
    if not path.is_file():
        return [
            pytest.param(
                None,
                marks=pytest.mark.skip(
                    reason=f"known-answer vectors not found at {path}; "
                    "set CONSENT_LEDGER_VECTORS to the vectors directory"
                ),
                id="vectors-missing",
            )
        ]
    cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
    return [pytest.param(case, id=case["source"]) for case in cases if keep(case)]


CASES = _load_cases()
# Go's test vector is the one that comes with its private key.
SIGNER_CASES = _load_cases(lambda case: "signer_key" in case)
CHECKPOINT_CASES = _load_cases(lambda case: case["source"].startswith("sum.golang.org"))

# Module-level keys: hypothesis tests cannot use function-scoped fixtures.
OLD_KEY = SigningKey.generate("example.com/log")
NEW_KEY = SigningKey.generate("example.com/log")
WITNESS_KEY = SigningKey.generate("witness.example")
ROOT = bytes(range(32))


def _note_of(case: dict[str, Any]) -> str:
    return f"{case['text']}\n{case['signature_line']}\n"


def _signature_line(name: str, raw: bytes) -> str:
    return f"{EM_DASH} {name} {b64(raw)}\n"


# --- known answers ------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_known_answer_note_verifies_under_its_verifier_key(case: dict[str, Any]) -> None:
    key = VerifierKey.parse(case["verifier_key"])
    note, verified = verify_note(_note_of(case), [key])
    assert verified == [key]
    assert note.text == case["text"]


@pytest.mark.parametrize("case", CASES)
def test_known_answer_verifier_key_round_trips_byte_exact(case: dict[str, Any]) -> None:
    key = VerifierKey.parse(case["verifier_key"])
    assert str(key) == case["verifier_key"]
    assert key_id(key.name, key.public_key) == key.key_id


@pytest.mark.parametrize("case", CASES)
def test_known_answer_note_reserialises_byte_exact(case: dict[str, Any]) -> None:
    assert str(Note.parse(_note_of(case))) == _note_of(case)


@pytest.mark.parametrize("case", CASES)
def test_known_answer_fails_when_text_is_changed(case: dict[str, Any]) -> None:
    key = VerifierKey.parse(case["verifier_key"])
    tampered = case["text"].replace("\n", " \n", 1) + "\n" + case["signature_line"] + "\n"
    with pytest.raises(VerificationError, match="does not verify"):
        verify_note(tampered, [key])


@pytest.mark.parametrize("case", SIGNER_CASES)
def test_go_signer_key_reproduces_the_known_signature(case: dict[str, Any]) -> None:
    verifier, private_key = parse_go_signer_key(case["signer_key"])
    assert str(verifier) == case["verifier_key"]
    signer = SigningKey(verifier.name, private_key)
    assert sign_note(case["text"], [signer]) == _note_of(case)


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_sum_golang_org_checkpoint_opens_with_its_origin(case: dict[str, Any]) -> None:
    key = VerifierKey.parse(case["verifier_key"])
    checkpoint = open_checkpoint(_note_of(case), [key], origin="go.sum database tree")
    assert checkpoint.size == 30055305
    assert checkpoint.body() == case["text"]


# --- signing and verifying ----------------------------------------------------

_LINE_CHARS = st.characters(
    codec="utf-8", exclude_categories=["Cs"], exclude_characters=[chr(i) for i in range(32)]
)


@given(lines=st.lists(st.text(_LINE_CHARS, max_size=40), min_size=1, max_size=6))
def test_sign_then_verify_round_trips_for_any_utf8_lines(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    signed = sign_note(text, [OLD_KEY])
    note, verified = verify_note(signed, [OLD_KEY.verifier_key])
    assert note.text == text
    assert verified == [OLD_KEY.verifier_key]
    assert str(Note.parse(signed)) == signed


def test_signed_note_has_the_c2sp_shape() -> None:
    signed = sign_note("hello\n", [OLD_KEY])
    text, blank, line = signed.partition("\n\n")
    assert (text, blank) == ("hello", "\n\n")
    assert re.fullmatch(rf"{EM_DASH} example\.com/log [A-Za-z0-9+/]+=*\n", line)
    raw = unb64(line.split(" ")[2].rstrip("\n"))
    assert raw[:4] == OLD_KEY.key_id
    assert len(raw) == 4 + 64


def test_text_with_blank_lines_splits_at_the_last_blank_line() -> None:
    text = "first\n\nsecond\n\n"
    note, _ = verify_note(sign_note(text, [OLD_KEY]), [OLD_KEY.verifier_key])
    assert note.text == text


def test_tampered_signature_fails_naming_the_key() -> None:
    signed = sign_note("hello\n", [OLD_KEY])
    note = Note.parse(signed)
    bad = bytes([note.signatures[0].signature[0] ^ 1]) + note.signatures[0].signature[1:]
    tampered = str(Note(note.text, (NoteSignature(OLD_KEY.name, OLD_KEY.key_id, bad),)))
    with pytest.raises(VerificationError, match=r"example\.com/log\+[0-9a-f]{8} does not verify"):
        verify_note(tampered, [OLD_KEY.verifier_key])


def test_signature_of_wrong_length_by_a_known_key_fails() -> None:
    note = Note("hello\n", (NoteSignature(OLD_KEY.name, OLD_KEY.key_id, bytes(63)),))
    with pytest.raises(VerificationError, match="does not verify"):
        verify_note(str(note), [OLD_KEY.verifier_key])


def test_note_signed_by_another_key_fails_with_no_known_signature() -> None:
    signed = sign_note("hello\n", [WITNESS_KEY])
    with pytest.raises(VerificationError, match="no signature by a known key") as info:
        verify_note(signed, [OLD_KEY.verifier_key])
    assert info.value.subject == "signed note"
    assert "witness.example" in str(info.value)


def test_note_with_no_trusted_keys_fails() -> None:
    with pytest.raises(VerificationError, match="known keys: none"):
        verify_note(sign_note("hello\n", [OLD_KEY]), [])


def test_key_with_same_name_but_different_key_is_not_accepted() -> None:
    # Same name, different key: the key ID differs, so the signature is unknown.
    signed = sign_note("hello\n", [OLD_KEY])
    with pytest.raises(VerificationError, match="no signature by a known key"):
        verify_note(signed, [NEW_KEY.verifier_key])


def test_signatures_by_unknown_keys_are_ignored() -> None:
    signed = sign_note("hello\n", [WITNESS_KEY, OLD_KEY])
    # An unknown signer with an unparseable-by-us algorithm (a 72-byte
    # cosignature) must not get in the way either.
    signed += _signature_line("other.example", b"\x01\x02\x03\x04" + bytes(72))
    note, verified = verify_note(signed, [OLD_KEY.verifier_key])
    assert verified == [OLD_KEY.verifier_key]
    assert len(note.signatures) == 3


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [
        pytest.param([OLD_KEY], [OLD_KEY], id="old-key-only"),
        pytest.param([NEW_KEY], [NEW_KEY], id="new-key-only"),
        pytest.param([NEW_KEY, OLD_KEY], [NEW_KEY, OLD_KEY], id="both-in-caller-order"),
    ],
)
def test_note_signed_by_old_and_new_keys_verifies_under_either(
    trusted: list[SigningKey], expected: list[SigningKey]
) -> None:
    signed = sign_note("rotating\n", [OLD_KEY, NEW_KEY])
    _, verified = verify_note(signed, [key.verifier_key for key in trusted])
    assert verified == [key.verifier_key for key in expected]


def test_bad_signature_by_a_known_key_fails_even_if_another_verifies() -> None:
    good = sign_note("hello\n", [OLD_KEY])
    forged = _signature_line(NEW_KEY.name, NEW_KEY.key_id + bytes(64))
    with pytest.raises(VerificationError, match="signature line 2"):
        verify_note(good + forged, [OLD_KEY.verifier_key, NEW_KEY.verifier_key])


def test_repeated_trusted_key_counts_once() -> None:
    signed = sign_note("hello\n", [OLD_KEY, OLD_KEY])
    _, verified = verify_note(signed, [OLD_KEY.verifier_key, OLD_KEY.verifier_key])
    assert verified == [OLD_KEY.verifier_key]


def test_two_trusted_keys_with_the_same_name_and_id_are_refused() -> None:
    real = OLD_KEY.verifier_key
    impostor = object.__new__(VerifierKey)
    for field, value in (("name", real.name), ("key_id", real.key_id), ("public_key", bytes(32))):
        object.__setattr__(impostor, field, value)
    with pytest.raises(InvalidInput, match="ambiguous"):
        verify_note(sign_note("hello\n", [OLD_KEY]), [real, impostor])


_GOOD = sign_note("hello\n", [OLD_KEY])
_GOOD_LINE = _GOOD.split("\n\n", 1)[1]
_GOOD_B64 = _GOOD_LINE.split(" ")[2].rstrip("\n")


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        pytest.param("hello\n" + _GOOD_LINE, "no blank line", id="no-separator"),
        pytest.param("hello\n\n", "no signature lines", id="no-signatures"),
        pytest.param(_GOOD[:-1], "does not end with a newline", id="no-final-newline"),
        pytest.param(_GOOD + "\n", "no signature lines", id="trailing-blank-line"),
        pytest.param(_GOOD.replace(EM_DASH, "-"), "em dash", id="hyphen-not-em-dash"),
        pytest.param(_GOOD.replace(EM_DASH + " ", EM_DASH), "em dash", id="no-space-after-dash"),
        pytest.param(
            "hello\n\n" + f"{EM_DASH} example.com/log\n", "no signature after", id="no-sig"
        ),
        pytest.param(_GOOD.replace(_GOOD_B64, _GOOD_B64[:-2]), "base64", id="truncated-base64"),
        pytest.param(_GOOD.replace(_GOOD_B64, "!" + _GOOD_B64[1:]), "base64", id="bad-base64"),
        pytest.param(
            _GOOD.replace(_GOOD_B64, _GOOD_B64 + " "), "base64", id="trailing-space-in-base64"
        ),
        pytest.param("hello\n\n" + _signature_line("a", b"\x01\x02\x03\x04"), "only 4 bytes"),
        pytest.param("hello\n\n" + _signature_line("a+b", bytes(68)), "'\\+'", id="plus-in-name"),
        pytest.param("hel\rlo\n" + _GOOD[5:], "U\\+000D", id="carriage-return"),
        pytest.param("hel\udcfflo\n" + _GOOD[5:], "UTF-8", id="lone-surrogate"),
        pytest.param(
            "hello\n\n" + _signature_line("a", bytes(68)) * 101, "more than 100", id="101-sigs"
        ),
    ],
)
def test_malformed_note_is_rejected_with_the_reason(note: str, reason: str) -> None:
    with pytest.raises(VerificationError, match=reason) as info:
        Note.parse(note)
    assert "malformed note" in str(info.value)
    with pytest.raises(VerificationError, match=reason):
        verify_note(note, [OLD_KEY.verifier_key])


def test_non_canonical_base64_signature_is_rejected() -> None:
    # Flip the unused low bits of the final base64 character: same bytes,
    # different text, which a lenient decoder would accept.
    encoded = b64(OLD_KEY.key_id + bytes(64))  # 68 bytes: ends in "="
    last = encoded[-2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    tweaked = encoded[:-2] + alphabet[alphabet.index(last) + 1] + "="
    note = f"hello\n\n{EM_DASH} example.com/log {tweaked}\n"
    with pytest.raises(VerificationError, match="canonical"):
        Note.parse(note)


def test_exactly_100_signatures_are_accepted() -> None:
    note = "hello\n\n" + _signature_line("a", bytes(68)) * 99 + _GOOD_LINE
    _, verified = verify_note(note, [OLD_KEY.verifier_key])
    assert verified == [OLD_KEY.verifier_key]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("", "non-empty", id="empty"),
        pytest.param("no newline", "end with a newline", id="no-final-newline"),
        pytest.param("tab\there\n", "U\\+0009", id="control-character"),
        pytest.param("bad \udc80\n", "UTF-8", id="lone-surrogate"),
    ],
)
def test_sign_note_rejects_text_other_readers_would_reject(text: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        sign_note(text, [OLD_KEY])


def test_sign_note_needs_a_signer() -> None:
    with pytest.raises(InvalidInput, match="at least one signer"):
        sign_note("hello\n", [])


# --- verifier keys --------------------------------------------------------------


def test_verifier_key_string_has_name_hex_id_and_typed_key() -> None:
    key = OLD_KEY.verifier_key
    name, hex_id, encoded = str(key).split("+", 2)
    assert name == "example.com/log"
    assert hex_id == OLD_KEY.key_id.hex()
    assert unb64(encoded) == b"\x01" + OLD_KEY.public_key_bytes
    assert VerifierKey.parse(str(key)) == key


def test_verifier_key_hex_id_is_accepted_in_upper_case() -> None:
    name, hex_id, encoded = str(OLD_KEY.verifier_key).split("+", 2)
    assert VerifierKey.parse(f"{name}+{hex_id.upper()}+{encoded}") == OLD_KEY.verifier_key


_VK_NAME, _VK_ID, _VK_B64 = str(OLD_KEY.verifier_key).split("+", 2)
_OTHER_ID = f"{int(_VK_ID, 16) ^ 1:08x}"
_ALG2_KEY = b64(b"\x02" + bytes(32))
_SHORT_KEY = b64(b"\x01" + bytes(31))
_ZERO_SEED = b64(b"\x01" + bytes(32))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("", "expected <name>", id="empty"),
        pytest.param(f"{_VK_NAME}+{_VK_ID}", "expected <name>", id="two-fields"),
        pytest.param(f"+{_VK_ID}+{_VK_B64}", "bad name", id="empty-name"),
        pytest.param(f"a b+{_VK_ID}+{_VK_B64}", "whitespace", id="space-in-name"),
        pytest.param(f"{_VK_NAME}+{_VK_ID[:7]}+{_VK_B64}", "8 hex digits", id="short-id"),
        pytest.param(f"{_VK_NAME}+{_VK_ID}0+{_VK_B64}", "8 hex digits", id="long-id"),
        pytest.param(f"{_VK_NAME}+zzzzzzzz+{_VK_B64}", "8 hex digits", id="non-hex-id"),
        pytest.param(f"{_VK_NAME}+{_VK_ID}+{_VK_B64[:-1]}", "base64", id="bad-base64"),
        pytest.param(f"{_VK_NAME}+{_VK_ID}+{b64(b'')}", "unsupported key type", id="no-key"),
        pytest.param(f"{_VK_NAME}+{_VK_ID}+{_ALG2_KEY}", "unsupported", id="wrong-alg"),
        pytest.param(f"{_VK_NAME}+{_VK_ID}+{_SHORT_KEY}", "32 bytes", id="short"),
        pytest.param(f"{_VK_NAME}+{_OTHER_ID}+{_VK_B64}", "does not match", id="wrong-id"),
        pytest.param(f"other.example+{_VK_ID}+{_VK_B64}", "does not match", id="wrong-name"),
    ],
)
def test_malformed_verifier_key_is_rejected(text: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        VerifierKey.parse(text)


def test_verifier_key_cannot_be_built_with_a_wrong_key_id() -> None:
    with pytest.raises(InvalidInput, match="does not match"):
        VerifierKey("example.com/log", KeyID(bytes(4)), OLD_KEY.public_key_bytes)


def test_key_id_is_truncated_sha256_of_name_newline_type_and_key() -> None:
    import hashlib

    expected = hashlib.sha256(b"example.com/log\n\x01" + OLD_KEY.public_key_bytes).digest()[:4]
    assert key_id("example.com/log", OLD_KEY.public_key_bytes) == expected == OLD_KEY.key_id


def test_verify_returns_false_for_bad_signatures() -> None:
    key = OLD_KEY.verifier_key
    signature = OLD_KEY.sign(b"message")
    assert key.verify(b"message", signature)
    assert not key.verify(b"massage", signature)
    assert not key.verify(b"message", signature[:-1])
    assert not NEW_KEY.verifier_key.verify(b"message", signature)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("PRIVATE+KEY+a+00000000", "expected PRIVATE", id="missing-field"),
        pytest.param("PUBLIC+KEY+a+00000000+AA==", "must start with", id="wrong-prefix"),
        pytest.param(f"PRIVATE+KEY+a+00000000+{_ZERO_SEED}", "does not match"),
        pytest.param(f"PRIVATE+KEY+a+00000000+{_SHORT_KEY}", "32-byte seed"),
    ],
)
def test_malformed_go_signer_key_is_rejected(text: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        parse_go_signer_key(text)


# --- base64 and origins -----------------------------------------------------------


@given(st.binary(max_size=100))
def test_b64_round_trips_any_bytes(data: bytes) -> None:
    assert unb64(b64(data)) == data


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("AAE", id="missing-padding"),
        pytest.param("AA E=", id="inner-space"),
        pytest.param("AAE=\n", id="trailing-newline"),
        pytest.param("-_8=", id="url-safe-alphabet"),
        pytest.param("AAF=", id="non-zero-trailing-bits"),
        pytest.param("AAE==", id="extra-padding"),
        pytest.param("ÄAE=", id="non-ascii"),
    ],
)
def test_unb64_rejects_anything_but_canonical_padded_base64(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        unb64(text, field="root")
    assert info.value.field == "root"


@pytest.mark.parametrize(
    "origin", ["example.com/log", "consent.example.org/ledger/eu-1", "é.example/☃", "a" * 255]
)
def test_valid_origins_are_accepted(origin: str) -> None:
    assert validate_origin(origin) == origin


@pytest.mark.parametrize(
    ("origin", "reason"),
    [
        pytest.param("", "non-empty", id="empty"),
        pytest.param("a" * 256, "more than 255", id="too-long"),
        pytest.param("example.com log", "whitespace", id="space"),
        pytest.param("example.com/log\n", "whitespace", id="newline"),
        pytest.param("example.com\u00a0log", "whitespace", id="nbsp"),
        pytest.param("example.com+log", "'\\+'", id="plus"),
        pytest.param("example.com\x7flog", "printable", id="delete-character"),
        pytest.param("example.com\u200blog", "printable", id="zero-width-space"),
    ],
)
def test_invalid_origins_are_rejected(origin: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason) as info:
        validate_origin(origin)
    assert info.value.field == "origin"


# --- checkpoints ------------------------------------------------------------------


def test_checkpoint_body_is_byte_exact() -> None:
    body = Checkpoint("example.com/log", 5, bytes(32)).body()
    assert body == "example.com/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"


@given(
    size=st.integers(min_value=0, max_value=2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
)
def test_checkpoint_body_parses_back_to_the_same_checkpoint(size: int, root: bytes) -> None:
    checkpoint = Checkpoint("example.com/log", size, root)
    assert Checkpoint.parse_body(checkpoint.body()) == checkpoint


_ROOT_B64 = b64(ROOT)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(f"o\n5\n{_ROOT_B64}", "end with a newline", id="no-final-newline"),
        pytest.param(f"o\n5\n{_ROOT_B64}\nextension\n", "found 4", id="extension-line"),
        pytest.param(f"o\n5\n{_ROOT_B64}\n\n", "found 4", id="trailing-blank-line"),
        pytest.param("o\n5\n", "found 2", id="no-root"),
        pytest.param(f"\n5\n{_ROOT_B64}\n", "origin", id="empty-origin"),
        pytest.param(f"o\n05\n{_ROOT_B64}\n", "leading zeros", id="leading-zero"),
        pytest.param(f"o\n+5\n{_ROOT_B64}\n", "decimal", id="plus-sign"),
        pytest.param(f"o\n-1\n{_ROOT_B64}\n", "decimal", id="negative"),
        pytest.param(f"o\n1_000\n{_ROOT_B64}\n", "decimal", id="underscore"),
        pytest.param(f"o\n\u0665\n{_ROOT_B64}\n", "decimal", id="arabic-indic-digit"),
        pytest.param(f"o\n{2**64}\n{_ROOT_B64}\n", "2\\*\\*64", id="over-uint64"),
        pytest.param(f"o\n5\n{b64(bytes(31))}\n", "32 bytes", id="short-root"),
        pytest.param(f"o\n5\n{_ROOT_B64.rstrip('=')}\n", "base64", id="unpadded-root"),
    ],
)
def test_malformed_checkpoint_body_is_rejected(body: str, reason: str) -> None:
    with pytest.raises(VerificationError, match=reason) as info:
        Checkpoint.parse_body(body)
    assert info.value.subject == "checkpoint"


@pytest.mark.parametrize(
    ("origin", "size", "root"),
    [
        pytest.param("", 1, ROOT, id="empty-origin"),
        pytest.param("a\nb", 1, ROOT, id="newline-in-origin"),
        pytest.param("o", -1, ROOT, id="negative-size"),
        pytest.param("o", 2**64, ROOT, id="size-over-uint64"),
        pytest.param("o", True, ROOT, id="bool-size"),
        pytest.param("o", 1, bytes(33), id="long-root"),
    ],
)
def test_checkpoint_rejects_invalid_fields(origin: str, size: int, root: bytes) -> None:
    with pytest.raises(InvalidInput):
        Checkpoint(origin, size, root)


def test_signed_checkpoint_opens_to_the_same_checkpoint() -> None:
    checkpoint = Checkpoint("example.com/log", 42, ROOT)
    signed = sign_checkpoint(checkpoint, [OLD_KEY])
    assert signed.startswith(checkpoint.body() + "\n" + EM_DASH)
    opened = open_checkpoint(signed, [OLD_KEY.verifier_key], origin="example.com/log")
    assert opened == checkpoint


def test_checkpoint_for_another_origin_is_rejected() -> None:
    signed = sign_checkpoint(Checkpoint("other.example/log", 42, ROOT), [OLD_KEY])
    with pytest.raises(VerificationError, match="expected 'example.com/log'") as info:
        open_checkpoint(signed, [OLD_KEY.verifier_key], origin="example.com/log")
    assert info.value.subject == "checkpoint"


def test_checkpoint_with_changed_size_is_rejected() -> None:
    signed = sign_checkpoint(Checkpoint("example.com/log", 42, ROOT), [OLD_KEY])
    with pytest.raises(VerificationError, match="does not verify") as info:
        open_checkpoint(signed.replace("\n42\n", "\n43\n"), [OLD_KEY.verifier_key])
    assert info.value.subject == "checkpoint"


def test_signed_note_that_is_not_a_checkpoint_is_rejected() -> None:
    signed = sign_note("just a note\n", [OLD_KEY])
    with pytest.raises(VerificationError, match="malformed checkpoint"):
        open_checkpoint(signed, [OLD_KEY.verifier_key])
