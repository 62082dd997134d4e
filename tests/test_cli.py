"""The `consent-ledger` command line, end to end, on SQLite and on PostgreSQL.

Every test drives the real Typer app in-process through `CliRunner`, with its
settings taken from the environment exactly as a user's shell would give them
(`CONSENT_LEDGER_HOME`, `CONSENT_LEDGER_DATABASE_URL`). What the CLI prints is
checked the way an outsider would check it: signed checkpoints with nothing but
`cryptography`'s Ed25519 and the C2SP signed-note rules, and inclusion and
consistency proofs with a small RFC 9162 verifier written here, independent of
`ledger/`.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import text
from sqlalchemy.engine import make_url
from typer.testing import Result

from cli.main import app
from tests.cli_harness import (
    FAILURE,
    OK,
    TIMESTAMP,
    USAGE,
    Home,
    cli_environment,
    describe,
    invoke,
    invoke_json,
    runner,
    tree_size,
)
from tests.e2e.independent import (
    OpenedCheckpoint,
    leaf_hash,
    make_verifier_key,
    node_hash,
    open_signed_checkpoint,
    parse_verifier_key,
    signature_verifies,
    verify_consistency,
    verify_inclusion,
)

ORIGIN = "test.example/cli"
DEFAULT_POLICY = (
    Path(__file__).resolve().parents[1] / "ledger" / "consent" / "policies" / "default.toml"
)
VERIFIER_KEY = re.compile(r"^[^\s+]+\+[0-9a-f]{8}\+[A-Za-z0-9+/]+=*$")


# --- running the CLI -----------------------------------------------------------------------


def entry_seq(result: Result) -> int:
    """The seq a write command reports (`… as entry 7 (tree size 8)`)."""
    match = re.search(r"as entry (\d+)", result.stdout)
    assert match, result.output
    return int(match.group(1))


def printed_verifier_key(result: Result) -> str:
    """The line after `… verifier key:` in what `init` or `keys rotate` printed."""
    lines = result.stdout.splitlines()
    for position, line in enumerate(lines[:-1]):
        if line.rstrip().endswith("verifier key:") or line.startswith("new verifier key"):
            return lines[position + 1].strip()
    raise AssertionError(f"no verifier key in {result.stdout!r}")


@pytest.fixture
def home(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Home:
    """Environment for a ledger that has not been initialised yet (migrated, empty DB)."""
    return cli_environment(tmp_path, database_url, monkeypatch)


@pytest.fixture
def vkey(home: Home) -> str:
    """`consent-ledger init --origin ORIGIN`; the verifier key it printed."""
    result = invoke("init", "--origin", ORIGIN)
    return printed_verifier_key(result)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No ledger and no database: for what must work offline. Nothing may be created."""
    home = tmp_path / "no-home"
    monkeypatch.setenv("CONSENT_LEDGER_HOME", str(home))
    monkeypatch.delenv("CONSENT_LEDGER_DATABASE_URL", raising=False)
    monkeypatch.delenv("CONSENT_LEDGER_KEY_PASSPHRASE", raising=False)
    yield tmp_path
    assert not home.exists(), "an offline command created the ledger home"


def check_cases(cases: list[tuple[list[str], int, str]]) -> None:
    """Run many commands; report every one whose exit code or message is wrong."""
    wrong = []
    for args, code, message in cases:
        result = runner.invoke(app, args)
        if result.exit_code != code or message not in result.output:
            wrong.append(
                f"`{' '.join(args)}` -> {result.exit_code} (want {code} and {message!r}):\n"
                + describe(result)
            )
    assert not wrong, "\n\n".join(wrong)


def b64decode_all(values: list[str]) -> list[bytes]:
    return [base64.b64decode(value, validate=True) for value in values]


def test_independent_verifiers_reject_what_they_should() -> None:
    """The hand-written verifiers are not vacuous: a four-leaf tree built here."""
    leaves = [leaf_hash(bytes([n])) for n in range(4)]
    left, right = node_hash(leaves[0], leaves[1]), node_hash(leaves[2], leaves[3])
    root = node_hash(left, right)
    assert verify_inclusion(2, 4, leaves[2], [leaves[3], left], root)
    assert not verify_inclusion(3, 4, leaves[2], [leaves[3], left], root)
    assert not verify_inclusion(2, 4, leaves[2], [left, leaves[3]], root)
    assert verify_consistency(2, 4, left, root, [right])
    assert not verify_consistency(2, 4, left, root, [left])
    three = node_hash(left, leaves[2])
    assert verify_consistency(3, 4, three, root, [leaves[2], leaves[3], left])
    assert not verify_consistency(3, 4, three, root, [leaves[3], leaves[2], left])

    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key = make_verifier_key("example.org/log", public)
    key_id = bytes.fromhex(key.split("+")[1])
    body = f"example.org/log\n4\n{base64.b64encode(root).decode()}\n"
    signature = base64.b64encode(key_id + private.sign(body.encode())).decode()
    note = f"{body}\n\u2014 example.org/log {signature}\n"
    assert open_signed_checkpoint(note, key) == OpenedCheckpoint("example.org/log", 4, root)
    assert not signature_verifies(note.replace("\n4\n", "\n5\n"), key)
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert not signature_verifies(note, make_verifier_key("example.org/log", other))


# --- init -----------------------------------------------------------------------------------


def test_init_prints_the_verifier_key(home: Home) -> None:
    result = invoke("init", "--origin", ORIGIN)

    assert "ledger initialised in" in result.stdout
    assert str(home.path) in result.stdout
    assert "tree size 2; verifier key:" in result.stdout
    key = printed_verifier_key(result)
    assert VERIFIER_KEY.match(key), key
    name = parse_verifier_key(key).name
    assert name == ORIGIN
    assert invoke("keys", "show").stdout.strip() == key
    assert invoke_json("keys", "show") == {"verifier_key": key}
    # SPEC §5: init also creates an `admin` API client and prints its key, once.
    lines = result.stdout.splitlines()
    announced = [n for n, line in enumerate(lines) if line.startswith("admin API key")]
    assert len(announced) == 1, result.stdout
    admin_key = lines[announced[0] + 1].strip()
    assert len(admin_key) >= 32, admin_key
    assert admin_key not in invoke("init", code=FAILURE).output
    # The home holds the key, private to its owner (SPEC §1).
    assert (home.path.stat().st_mode & 0o777) == 0o700
    for file in home.path.rglob("*"):
        if file.is_file():
            assert (file.stat().st_mode & 0o777) == 0o600, file


def test_init_names_the_database_without_its_password(
    home: Home, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        result = invoke("init", "--origin", ORIGIN)
        assert f"database: {database_url}" in result.stdout
        return
    # Trust auth accepts any password, so one can be set to check that it is hidden.
    monkeypatch.setenv(
        "CONSENT_LEDGER_DATABASE_URL",
        url.set(password="s3cret-pw").render_as_string(hide_password=False),
    )
    result = invoke("init", "--origin", ORIGIN)
    assert "s3cret-pw" not in result.output
    assert f"database: postgresql+psycopg://postgres:***@{url.host}" in result.stdout


def test_init_uses_a_random_origin_by_default(home: Home) -> None:
    result = invoke("init")
    key = printed_verifier_key(result)
    name = parse_verifier_key(key).name
    assert re.fullmatch(r"consent-ledger\.local/[0-9a-f]{16}", name), name


def test_second_init_refuses_and_changes_nothing(home: Home, vkey: str) -> None:
    key_files = {p: p.read_bytes() for p in sorted(home.path.rglob("*")) if p.is_file()}
    before = invoke("checkpoint").stdout

    for args in (["init"], ["init", "--origin", "other.example/log"]):
        result = invoke(*args, code=FAILURE)
        assert "refusing to overwrite" in result.output

    assert invoke("checkpoint").stdout == before
    assert invoke("keys", "show").stdout.strip() == vkey
    assert {p: p.read_bytes() for p in sorted(home.path.rglob("*")) if p.is_file()} == key_files
    invoke("verify")


def test_init_with_a_new_home_on_an_existing_database_refuses(
    home: Home, vkey: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_home = home.tmp_path / "other-home"
    monkeypatch.setenv("CONSENT_LEDGER_HOME", str(other_home))
    result = invoke("init", code=FAILURE)
    assert "this database already holds a ledger" in result.output
    assert not list(other_home.rglob("*.pem")), "a key was left behind"


def test_init_with_an_existing_key_on_a_new_database_refuses(
    home: Home, vkey: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENT_LEDGER_DATABASE_URL", f"sqlite:///{home.tmp_path / 'new.db'}")
    result = invoke("init", code=FAILURE)
    assert "a signing key already exists" in result.output
    monkeypatch.setenv("CONSENT_LEDGER_DATABASE_URL", home.database_url)
    assert invoke("keys", "show").stdout.strip() == vkey
    invoke("verify")


def test_init_with_a_bad_origin_is_a_usage_error(home: Home) -> None:
    result = invoke("init", "--origin", "has space", code=USAGE)
    assert "origin" in result.output
    # Nothing was created, so a good init still works.
    invoke("init", "--origin", ORIGIN)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["check", "u", "content.public"], id="check"),
        pytest.param(["keys", "show"], id="keys-show"),
        pytest.param(
            ["init"],
            id="init",
        ),
    ],
)
def test_bad_settings_are_a_usage_error(
    offline: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("CONSENT_LEDGER_DATABASE_URL", "mysql://db.example/ledger")
    result = invoke(*command, code=USAGE)
    assert "bad settings" in result.output
    assert "CONSENT_LEDGER_DATABASE_URL" in result.output


# --- commands before init -------------------------------------------------------------------


def test_commands_before_init_say_to_run_init(home: Home) -> None:
    """The database exists and is migrated, but `init` never ran."""
    policy = home.write("policy.toml", _policy_text(version=2))
    init = "no ledger in this database: run `consent-ledger init`"
    check_cases(
        [
            (["check", "u", "content.public"], FAILURE, init),
            (["check", "u", "content.public", "--json"], FAILURE, init),
            (["checkpoint"], FAILURE, init),
            (["checkpoint", "--json"], FAILURE, init),
            (["subject", "register", "u", "--jurisdiction", "DE"], FAILURE, init),
            (["subject", "erase", "u"], FAILURE, init),
            (["consent", "grant", "u", "content.public"], FAILURE, init),
            (["consent", "deny", "u", "content.public"], FAILURE, init),
            (["consent", "withdraw", "u", "content.public"], FAILURE, init),
            (["keys", "show"], FAILURE, init),
            (["keys", "rotate"], FAILURE, init),
            (["policy", "show"], FAILURE, init),
            (["policy", "publish", str(policy)], FAILURE, init),
            (["proof", "inclusion", "0"], FAILURE, init),
            (["proof", "consistency", "1", "2"], FAILURE, init),
        ]
    )
    # …and none of it got in the way of initialising afterwards.
    invoke("init", "--origin", ORIGIN)
    assert tree_size() == 2
    invoke("verify")


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(
            ["subject", "show", "u"],
            id="subject-show",
        ),
        pytest.param(
            ["consent", "history", "u"],
            id="consent-history",
        ),
        pytest.param(
            ["verify"],
            id="verify",
        ),
    ],
)
def test_reads_before_init_say_to_run_init(home: Home, command: list[str]) -> None:
    result = invoke(*command, code=FAILURE)
    assert "consent-ledger init" in result.output


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_environment(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A brand-new user: an empty home and a database nobody has touched.

    SQLite: no CONSENT_LEDGER_DATABASE_URL at all (the default `ledger.db` in
    the home). PostgreSQL: a freshly created, empty database.
    """
    monkeypatch.setenv("CONSENT_LEDGER_HOME", str(tmp_path / "new-home"))
    monkeypatch.delenv("CONSENT_LEDGER_KEY_PASSPHRASE", raising=False)
    if request.param == "sqlite":
        monkeypatch.delenv("CONSENT_LEDGER_DATABASE_URL", raising=False)
        yield
        return
    from tests.conftest import PG_URL, _admin_engine

    request.getfixturevalue("postgres_template")  # skips or fails like the other PG tests
    name = f"cl_empty_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    monkeypatch.setenv(
        "CONSENT_LEDGER_DATABASE_URL",
        make_url(PG_URL).set(database=name).render_as_string(hide_password=False),
    )
    yield
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_commands_on_a_fresh_install_say_to_run_init(fresh_environment: None) -> None:
    init = "consent-ledger init"
    check_cases(
        [
            (["check", "u", "content.public"], FAILURE, init),
            (["keys", "show"], FAILURE, init),
            (["checkpoint"], FAILURE, init),
            (["subject", "register", "u"], FAILURE, init),
            (["subject", "show", "u"], FAILURE, init),
            (["policy", "show"], FAILURE, init),
            (["proof", "inclusion", "0"], FAILURE, init),
            (["verify"], FAILURE, init),
        ]
    )


def test_a_fresh_install_can_init_and_verify(fresh_environment: None) -> None:
    result = invoke("init", "--origin", ORIGIN)
    key = printed_verifier_key(result)
    invoke("verify", "--key", key)


# --- the new-user walk-through: eligibility answers (SPEC §3.4) -------------------------


@dataclass
class WalkThrough:
    seqs: dict[str, int]


@pytest.fixture
def walk_through(vkey: str) -> WalkThrough:
    """Subjects in DE, the US, nowhere and a minor, and their decisions."""
    invoke("subject", "register", "de-anna", "--jurisdiction", "DE")
    invoke("subject", "register", "us-ben", "--jurisdiction", "us")  # any case in
    invoke("subject", "register", "nomad-cai")
    invoke("subject", "register", "teen-dana", "--jurisdiction", "US", "--minor")
    steps = {
        "de-grant-public": ["grant", "de-anna", "content.public"],
        "de-deny-profile-all": ["deny", "de-anna", "profile", "--purpose", "*"],
        "de-face-implicit": ["grant", "de-anna", "biometric.face"],
        "de-voice-explicit": [
            "grant", "de-anna", "biometric.voice", "--explicit", "--notice", "v3",
        ],
        "de-withdraw-generative": [
            "withdraw", "de-anna", "content.public", "--purpose", "ai-training.generative",
        ],
        "us-deny-mining-all": ["deny", "us-ben", "*", "--purpose", "data-mining"],
        "us-grant-education": ["grant", "us-ben", "profile.education"],
        "us-withdraw-education": ["withdraw", "us-ben", "profile.education"],
        "us-biometric-explicit": ["grant", "us-ben", "biometric", "--explicit"],
        "us-face-deny": ["deny", "us-ben", "biometric.face"],
        # A later non-explicit grant cannot override the explicit denial above.
        "us-face-implicit": ["grant", "us-ben", "biometric.face", "--method", "web-form"],
        "us-share-all": ["grant", "us-ben", "*", "--purpose", "third-party-sharing"],
        "nomad-grant-activity": ["grant", "nomad-cai", "activity"],
        "teen-grant-public": ["grant", "teen-dana", "content.public", "--explicit"],
    }  # fmt: skip
    seqs = {}
    for name, args in steps.items():
        result = invoke("consent", *args)
        verb = {"grant": "granted", "deny": "denied", "withdraw": "withdrawn"}[args[0]]
        assert result.stdout.startswith(f"{verb} {args[2]} for "), result.output
        seqs[name] = entry_seq(result)
    return WalkThrough(seqs=seqs)


@pytest.fixture
def small_ledger(vkey: str) -> dict[str, int]:
    """A ledger of six entries: two subjects, a denial and an explicit grant."""
    invoke("subject", "register", "de-anna", "--jurisdiction", "DE")
    invoke("subject", "register", "us-ben", "--jurisdiction", "US")
    return {
        "deny": entry_seq(invoke("consent", "deny", "de-anna", "content.public")),
        "grant": entry_seq(invoke("consent", "grant", "de-anna", "activity", "--explicit")),
    }


# (subject, category, purpose or None for the default, eligible, reason, deciding step)
ELIGIBILITY_TABLE: list[tuple[str, str, str | None, bool, str, str | None]] = [
    ("ghost", "content.public", None, False, "unknown-subject", None),
    ("de-anna", "content.public", None, True, "consent", "de-grant-public"),
    ("de-anna", "content.public", "ai-training", True, "consent", "de-grant-public"),
    ("de-anna", "content.public", "ai-training.generative", False, "withdrawn",
     "de-withdraw-generative"),
    ("de-anna", "content.public", "data-mining", False, "default-deny", None),
    ("de-anna", "content.private", None, False, "prohibited", None),
    ("de-anna", "content.private.messages", "ai-inference", False, "prohibited", None),
    ("de-anna", "content", None, False, "prohibited", None),
    ("de-anna", "profile", "ai-training", False, "refused", "de-deny-profile-all"),
    ("de-anna", "profile.employment", "ai-inference", False, "refused", "de-deny-profile-all"),
    ("de-anna", "activity", None, False, "default-deny", None),
    ("de-anna", "biometric.face", None, False, "explicit-consent-required", None),
    ("de-anna", "biometric.voice", None, True, "consent", "de-voice-explicit"),
    ("de-anna", "biometric.voice", "ai-training.generative", True, "consent",
     "de-voice-explicit"),
    ("de-anna", "biometric", None, False, "explicit-consent-required", None),
    ("us-ben", "content.public", None, True, "default-allow", None),
    ("us-ben", "content.public", "ai-inference", False, "default-deny", None),
    ("us-ben", "profile", None, True, "default-allow", None),
    ("us-ben", "profile.employment", None, True, "default-allow", None),
    ("us-ben", "profile.education", None, False, "withdrawn", "us-withdraw-education"),
    ("us-ben", "activity", None, True, "default-allow", None),
    ("us-ben", "activity", "data-mining", False, "refused", "us-deny-mining-all"),
    ("us-ben", "location", None, False, "default-deny", None),
    ("us-ben", "location", "third-party-sharing", True, "consent", "us-share-all"),
    ("us-ben", "biometric", None, True, "consent", "us-biometric-explicit"),
    ("us-ben", "biometric.voice", None, True, "consent", "us-biometric-explicit"),
    ("us-ben", "biometric.face", None, False, "refused", "us-face-deny"),
    ("us-ben", "biometric.face", "third-party-sharing", False, "explicit-consent-required",
     None),
    ("us-ben", "content.private.messages", "third-party-sharing", False, "prohibited", None),
    ("nomad-cai", "content.public", None, False, "default-deny", None),
    ("nomad-cai", "profile", None, False, "default-deny", None),
    ("nomad-cai", "activity", None, True, "consent", "nomad-grant-activity"),
    ("nomad-cai", "activity", "ai-training.generative", True, "consent",
     "nomad-grant-activity"),
    ("nomad-cai", "biometric", None, False, "explicit-consent-required", None),
    ("teen-dana", "content.public", None, False, "minor", None),
    ("teen-dana", "profile", None, False, "minor", None),
    ("teen-dana", "content.private", None, False, "prohibited", None),
]  # fmt: skip


def test_check_json_answers_every_case_of_the_walk_through(walk_through: WalkThrough) -> None:
    size = tree_size()
    expected: dict[str, tuple[bool, str, int | None]] = {}
    actual: dict[str, tuple[bool, str, int | None]] = {}
    for subject, category, purpose, eligible, reason, step in ELIGIBILITY_TABLE:
        case = f"{subject} {category} {purpose or '(default purpose)'}"
        args = ["check", subject, category, *(["--purpose", purpose] if purpose else [])]
        answer = invoke_json(*args)
        assert set(answer) == {
            "eligible",
            "reason",
            "decided_by",
            "policy_version",
            "checked_at",
            "at",
        }, case
        assert answer["policy_version"] == 1, case
        assert answer["checked_at"] == size, case
        assert TIMESTAMP.match(answer["at"]), case
        expected[case] = (eligible, reason, None if step is None else walk_through.seqs[step])
        actual[case] = (answer["eligible"], answer["reason"], answer["decided_by"])
    assert actual == expected


def test_check_prints_a_readable_verdict(small_ledger: dict[str, int]) -> None:
    result = invoke("check", "de-anna", "activity")
    assert result.stdout.startswith(
        f"ELIGIBLE: consent, decided by entry {small_ledger['grant']} (policy v1, tree size 6, at "
    )
    result = invoke("check", "de-anna", "content.public")
    assert result.stdout.startswith(
        f"NOT ELIGIBLE: refused, decided by entry {small_ledger['deny']} (policy v1, "
    )
    result = invoke("check", "us-ben", "content.public")
    assert result.stdout.startswith("ELIGIBLE: default-allow (policy v1, tree size 6, at ")


def test_bad_input_is_a_usage_error_naming_it(small_ledger: dict[str, int]) -> None:
    unknown_category = "category: unknown category"
    check_cases(
        [
            (["check", "de-anna", "content.publik"], USAGE, f"{unknown_category} 'content.publik'"),
            (["check", "de-anna", "dms", "--json"], USAGE, f"{unknown_category} 'dms'"),
            (["check", "de-anna", "*"], USAGE, "category"),
            (["check", "de-anna", "content.public", "--purpose", "ai-trainin"], USAGE,
             "purpose: unknown purpose 'ai-trainin'"),
            (["check", "de-anna", "content.public", "--at", "yesterday"], USAGE,
             "at: expected an RFC 3339 timestamp, got 'yesterday'"),
            (["check", "de-anna", "content.public", "--as-of", "0"], USAGE,
             "as_of: must be a tree size between 1 and 6, got 0"),
            (["check", "de-anna", "content.public", "--as-of", "7"], USAGE, "as_of"),
            (["check", "de-anna", "content.public", "--as-of", "many"], USAGE, "'--as-of'"),
            (["check", "x" * 257, "content.public"], USAGE, "subject_id"),
            (["check", "", "content.public"], USAGE, "subject_id"),
            (["consent", "grant", "de-anna", "content.publik"], USAGE,
             "unknown category 'content.publik'"),
            (["consent", "deny", "de-anna", "content.public", "-p", "training"], USAGE,
             "unknown purpose 'training'"),
            (["consent", "grant", "de-anna", "content.public", "--expires", "soon"], USAGE,
             "expires: expected an RFC 3339 timestamp"),
            (["consent", "grant", "de-anna", "content.public", "--method", "by phone"], USAGE,
             "method"),
            (["consent", "grant", "de-anna", "content.public", "--notice", "x" * 513], USAGE,
             "notice"),
            (["consent", "grant", "de-anna", "content.public",
              "--effective", "2030-01-01T00:00:00Z", "--expires", "2029-01-01T00:00:00Z"], USAGE,
             "expires: must be later than effective"),
            (["consent", "grant", "de-anna"], USAGE, "Missing argument 'category'"),
            (["subject", "register", "eve", "--jurisdiction", "XX"], USAGE,
             "jurisdiction: 'XX' is not an ISO 3166-1 alpha-2 country code"),
            (["subject", "register", "eve", "--jurisdiction", "Germany"], USAGE, "jurisdiction"),
            (["subject", "register", "x" * 257], USAGE, "subject_id"),
            (["proof", "inclusion", "not-a-number"], USAGE, "Invalid value for 'index'"),
            (["no-such-command"], USAGE, "No such command"),
        ]
    )  # fmt: skip
    assert tree_size() == 6, "a rejected command wrote to the log"


def test_unknown_subjects_are_a_failure(small_ledger: dict[str, int]) -> None:
    not_registered = "subject 'ghost' is not registered"
    check_cases(
        [
            (["consent", "grant", "ghost", "content.public"], FAILURE, not_registered),
            (["consent", "withdraw", "ghost", "content.public"], FAILURE, not_registered),
            (["consent", "history", "ghost"], FAILURE, not_registered),
            (["consent", "history", "ghost", "--json"], FAILURE, not_registered),
            (["subject", "show", "ghost"], FAILURE, not_registered),
            (["subject", "show", "ghost", "--json"], FAILURE, not_registered),
            (["subject", "erase", "ghost"], FAILURE, not_registered),
        ]
    )
    assert tree_size() == 6


def test_check_as_of_and_at_give_the_answer_of_that_moment(vkey: str) -> None:
    invoke("subject", "register", "us-ben", "--jurisdiction", "US")
    before_denial = tree_size()
    denial = entry_seq(invoke("consent", "deny", "us-ben", "content.public"))
    timed = entry_seq(
        invoke(
            "consent", "grant", "us-ben", "location",
            "--effective", "2020-01-01T00:00:00Z", "--expires", "2021-01-01T00:00:00+00:00",
        )
    )  # fmt: skip
    later = entry_seq(
        invoke("consent", "grant", "us-ben", "activity", "--effective", "2999-01-01T00:00:00Z")
    )

    def answer(*args: str) -> tuple[bool, str, int | None]:
        result = invoke_json("check", "us-ben", *args)
        return result["eligible"], result["reason"], result["decided_by"]

    assert answer("content.public") == (False, "refused", denial)
    assert answer("content.public", "--as-of", str(before_denial)) == (
        True,
        "default-allow",
        None,
    )
    assert (
        invoke_json("check", "us-ben", "content.public", "--as-of", str(before_denial))[
            "checked_at"
        ]
        == before_denial
    )
    # An expired consent no longer applies; at a time inside its window it does.
    assert answer("location") == (False, "default-deny", None)
    assert answer("location", "--at", "2020-06-01T12:00:00Z") == (True, "consent", timed)
    assert answer("location", "--at", "2021-01-01T00:00:00Z") == (False, "default-deny", None)
    # A decision effective in the future does not apply yet.
    assert answer("activity") == (True, "default-allow", None)
    assert answer("activity", "--at", "2999-06-01T00:00:00Z") == (True, "consent", later)
    at = invoke_json("check", "us-ben", "activity", "--at", "2020-06-01T14:00:00+02:00")["at"]
    assert at == "2020-06-01T12:00:00.000000Z"


# --- subjects ------------------------------------------------------------------------------


def test_subject_register_and_update(vkey: str) -> None:
    result = invoke("subject", "register", "us-ben", "--jurisdiction", "US")
    assert result.stdout.startswith("subject.registered us-ben as entry 2 (tree size 3)")
    result = invoke("subject", "register", "us-ben", "--jurisdiction", "US")
    assert result.stdout.strip() == "subject us-ben unchanged"
    assert tree_size() == 3
    result = invoke("subject", "register", "us-ben", "--jurisdiction", "US", "--minor")
    assert result.stdout.startswith("subject.updated us-ben as entry 3")
    assert invoke_json("check", "us-ben", "content.public")["reason"] == "minor"
    invoke("subject", "register", "us-ben", "--jurisdiction", "FR")
    assert invoke_json("check", "us-ben", "content.public")["reason"] == "default-deny"
    view = invoke_json("subject", "show", "us-ben")
    assert (view["jurisdiction"], view["minor"], view["regime"]) == ("FR", False, "gdpr")


def test_subject_show_json_shape(walk_through: WalkThrough) -> None:
    view = invoke_json("subject", "show", "de-anna")
    policy = invoke_json("policy", "show")

    assert set(view) == {
        "subject_id",
        "subject",
        "jurisdiction",
        "minor",
        "regime",
        "registered_seq",
        "decisions",
        "eligibility",
        "checked_at",
        "policy_version",
        "at",
    }
    assert view["subject_id"] == "de-anna"
    assert view["subject"] != "de-anna"
    assert re.fullmatch(r"[0-9a-f]{32}", view["subject"])
    assert (view["jurisdiction"], view["minor"], view["regime"]) == ("DE", False, "gdpr")
    assert view["registered_seq"] == 2
    assert view["checked_at"] == tree_size()
    assert view["policy_version"] == 1
    assert TIMESTAMP.match(view["at"])

    de_steps = [name for name in walk_through.seqs if name.startswith("de-")]
    assert [row["seq"] for row in view["decisions"]] == [walk_through.seqs[n] for n in de_steps]
    for row in view["decisions"]:
        assert set(row) == {
            "seq",
            "category",
            "purpose",
            "decision",
            "explicit",
            "method",
            "notice",
            "effective",
            "expires",
        }
        assert TIMESTAMP.match(row["effective"])
        assert row["expires"] is None
        assert row["method"] == "cli"
    voice = next(row for row in view["decisions"] if row["category"] == "biometric.voice")
    assert (voice["decision"], voice["explicit"], voice["notice"]) == ("granted", True, "v3")

    pairs = [(row["category"], row["purpose"]) for row in view["eligibility"]]
    assert sorted(pairs) == sorted(
        (category, purpose) for category in policy["categories"] for purpose in policy["purposes"]
    )
    for row in view["eligibility"]:
        assert set(row) == {"category", "purpose", "eligible", "reason", "decided_by"}
    # The matrix gives the same answers as `check` (the walk-through table).
    by_pair = {(row["category"], row["purpose"]): row for row in view["eligibility"]}
    compared = 0
    for subject, category, purpose, eligible, reason, step in ELIGIBILITY_TABLE:
        if subject != "de-anna" or category not in policy["categories"]:
            continue
        row = by_pair[(category, purpose or "ai-training")]
        decided_by = None if step is None else walk_through.seqs[step]
        assert (row["eligible"], row["reason"], row["decided_by"]) == (
            eligible,
            reason,
            decided_by,
        ), (category, purpose)
        compared += 1
    assert compared >= 10


def test_subject_show_prints_a_summary(small_ledger: dict[str, int]) -> None:
    result = invoke("subject", "show", "de-anna")
    assert "de-anna" in result.stdout
    assert "jurisdiction DE (gdpr)" in result.stdout
    assert "minor no" in result.stdout
    assert "registered at entry 2" in result.stdout
    assert "Decisions" in result.stdout
    assert "Eligibility" in result.stdout


def test_erasure_unlinks_the_subject_for_good(walk_through: WalkThrough, home: Home) -> None:
    ref = invoke_json("subject", "show", "us-ben")["subject"]
    result = invoke("subject", "erase", "us-ben")
    assert result.stdout.startswith("subject.erased as entry ")
    erased_at = entry_seq(result)

    answer = invoke_json("check", "us-ben", "content.public")
    assert (answer["eligible"], answer["reason"], answer["decided_by"]) == (False, "erased", None)
    # Even at a tree size before the erasure (SPEC §3.1: every check answers `erased`).
    before = invoke_json("check", "us-ben", "activity", "--as-of", str(erased_at))
    assert (before["reason"], before["checked_at"]) == ("erased", erased_at)

    erased = "subject 'us-ben' was erased"
    check_cases(
        [
            (["subject", "erase", "us-ben"], FAILURE, erased),
            (["subject", "show", "us-ben"], FAILURE, erased),
            (["consent", "history", "us-ben"], FAILURE, erased),
            (["consent", "grant", "us-ben", "activity"], FAILURE, erased),
            (["subject", "register", "us-ben"], FAILURE, f"{erased} and cannot be registered"),
        ]
    )
    assert tree_size() == erased_at + 1

    # Nothing in the database links the log to the id any more; the log still verifies.
    assert home.scalar("SELECT count(*) FROM subjects WHERE subject_id = 'us-ben'") == 0
    assert home.scalar("SELECT count(*) FROM subjects WHERE ref = :ref", ref=ref) == 0
    assert home.scalar("SELECT count(*) FROM log_entries") == tree_size()
    for seq in range(tree_size()):
        canonical = home.scalar("SELECT canonical FROM log_entries WHERE seq = :seq", seq=seq)
        assert b"us-ben" not in bytes(canonical), seq
    assert "3 subjects verified" in invoke("verify").stdout
    # The other subjects are untouched.
    assert invoke_json("check", "de-anna", "content.public")["reason"] == "consent"


# --- consent history and evidence bundles -------------------------------------------------


def test_consent_history_json_is_an_evidence_bundle(walk_through: WalkThrough, vkey: str) -> None:
    bundle = invoke_json("consent", "history", "us-ben")

    assert set(bundle) == {"verifier_key", "checkpoint", "entries"}
    assert bundle["verifier_key"] == vkey
    checkpoint = open_signed_checkpoint(bundle["checkpoint"], vkey)
    assert checkpoint.origin == ORIGIN
    assert checkpoint.size == tree_size()
    kinds = []
    for item in bundle["entries"]:
        assert set(item) == {"index", "canonical", "inclusion", "entry"}
        canonical = base64.b64decode(item["canonical"], validate=True)
        assert json.loads(canonical) == item["entry"]
        assert item["entry"]["seq"] == item["index"]
        assert verify_inclusion(
            item["index"],
            checkpoint.size,
            leaf_hash(canonical),
            b64decode_all(item["inclusion"]),
            checkpoint.root,
        ), item["index"]
        # The log never holds the raw id.
        assert b"us-ben" not in canonical
        kinds.append(item["entry"]["kind"])
    us_steps = sorted(seq for name, seq in walk_through.seqs.items() if name.startswith("us-"))
    assert [item["index"] for item in bundle["entries"]][1:] == us_steps
    assert kinds[0] == "subject.registered"
    assert bundle["entries"][0]["entry"]["data"]["jurisdiction"] == "US"


def test_consent_history_prints_a_table(small_ledger: dict[str, int]) -> None:
    result = invoke("consent", "history", "de-anna")
    assert "History of de-anna" in result.stdout
    assert "subject.registered" in result.stdout
    assert "consent.recorded" in result.stdout
    assert f"proven against: {tree_size()} entries" in result.stdout


@pytest.fixture
def bundle_file(small_ledger: dict[str, int], home: Home) -> Path:
    return home.write("evidence.json", invoke("consent", "history", "de-anna", "--json").stdout)


def test_verify_bundle_accepts_the_history_with_the_ledger_key(
    bundle_file: Path, vkey: str
) -> None:
    result = invoke("verify-bundle", str(bundle_file), "--key", vkey)
    count = len(json.loads(bundle_file.read_text())["entries"])
    assert f"OK: {count} entries proven against the checkpoint of size {tree_size()}" in (
        result.stdout
    )
    assert ORIGIN in result.stdout

    report = invoke_json("verify-bundle", str(bundle_file), "--key", vkey)
    checkpoint = open_signed_checkpoint(json.loads(bundle_file.read_text())["checkpoint"], vkey)
    assert report == {
        "ok": True,
        "tree_size": checkpoint.size,
        "root": base64.b64encode(checkpoint.root).decode(),
        "entries": [item["index"] for item in json.loads(bundle_file.read_text())["entries"]],
    }
    # Several trusted keys: one of them signing is enough.
    other = _random_verifier_key(ORIGIN)
    invoke("verify-bundle", str(bundle_file), "--key", other, "--key", vkey)


def test_verify_bundle_works_offline(bundle_file: Path, vkey: str, home: Home) -> None:
    shutil.rmtree(home.path)
    if home.database_url.startswith("sqlite"):
        Path(make_url(home.database_url).database or "").unlink()
    invoke("verify-bundle", str(bundle_file), "--key", vkey)


def _random_verifier_key(name: str) -> str:
    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return make_verifier_key(name, public)


def test_verify_bundle_rejects_another_key(bundle_file: Path) -> None:
    result = invoke(
        "verify-bundle", str(bundle_file), "--key", _random_verifier_key(ORIGIN), code=FAILURE
    )
    assert "verification FAILED" in result.output
    result = invoke(
        "verify-bundle",
        str(bundle_file),
        "--key",
        _random_verifier_key("someone.else/log"),
        code=FAILURE,
    )
    assert "verification FAILED" in result.output


def _flip_base64_char(text_: str, start: int, end: int) -> str:
    """Change one character in the middle of the base64 string text_[start:end]."""
    position = (start + end) // 2
    replacement = "B" if text_[position] == "A" else "A"
    return text_[:position] + replacement + text_[position + 1 :]


def _change_root(document: str) -> str:
    root = json.loads(document)["checkpoint"].split("\n")[2]
    start = document.index(root)
    return _flip_base64_char(document, start, start + len(root))


def _change_size(document: str) -> str:
    note = json.loads(document)["checkpoint"]
    origin, size = note.split("\n")[:2]
    old = json.dumps(f"{origin}\n{size}\n")[1:-1]
    new = json.dumps(f"{origin}\n{int(size) + 1}\n")[1:-1]
    assert len(old) == len(new), "the size gained a digit: not a one-byte change"
    return document.replace(old, new, 1)


def _change_signature(document: str) -> str:
    line = json.loads(document)["checkpoint"].rstrip("\n").split("\n")[-1]
    signature = line.rsplit(" ", 1)[1]
    start = document.index(signature)
    return _flip_base64_char(document, start, start + len(signature))


def _change_canonical(document: str) -> str:
    canonical = json.loads(document)["entries"][-1]["canonical"]
    start = document.index(canonical)
    return _flip_base64_char(document, start, start + len(canonical))


def _change_inclusion(document: str) -> str:
    node = json.loads(document)["entries"][0]["inclusion"][0]
    start = document.index(node)
    return _flip_base64_char(document, start, start + len(node))


def _change_readable_entry(document: str) -> str:
    assert '"decision": "denied"' in document
    return document.replace('"decision": "denied"', '"decision": "denies"', 1)


def _change_index(document: str) -> str:
    index = json.loads(document)["entries"][1]["index"]
    old, new = f'"index": {index},', f'"index": {index ^ 1},'
    assert len(old) == len(new)
    return document.replace(old, new, 1)


ONE_BYTE_CHANGES = [
    _change_root,
    _change_size,
    _change_signature,
    _change_canonical,
    _change_inclusion,
    _change_readable_entry,
    _change_index,
]


def test_verify_bundle_rejects_one_changed_byte(bundle_file: Path, vkey: str) -> None:
    original = bundle_file.read_bytes()
    for change in ONE_BYTE_CHANGES:
        changed = change(original.decode()).encode()
        assert len(changed) == len(original), change.__name__
        assert sum(a != b for a, b in zip(changed, original, strict=True)) == 1, change.__name__

        bundle_file.write_bytes(changed)
        result = runner.invoke(app, ["verify-bundle", str(bundle_file), "--key", vkey])
        assert result.exit_code == FAILURE, f"{change.__name__}: " + describe(result)
        assert "verification FAILED" in result.output, change.__name__
        assert "OK" not in result.stdout, change.__name__
    bundle_file.write_bytes(original)
    invoke("verify-bundle", str(bundle_file), "--key", vkey)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("{not json", "not JSON"),
        ('{"verifier_key": "k", "entries": []}', "checkpoint: missing or not a string"),
        ('{"verifier_key": "k", "checkpoint": "c", "entries": {}}', "entries"),
        ("[1, 2]", "bundle"),
    ],
)
def test_verify_bundle_with_a_malformed_file_is_a_usage_error(
    offline: Path, content: str, named: str
) -> None:
    path = offline / "bad.json"
    path.write_text(content)
    result = invoke("verify-bundle", str(path), "--key", _random_verifier_key(ORIGIN), code=USAGE)
    assert named in result.output


def test_verify_bundle_with_a_malformed_key_is_a_usage_error(offline: Path) -> None:
    path = offline / "bundle.json"
    path.write_text('{"verifier_key": "k", "checkpoint": "c", "entries": []}')
    result = invoke("verify-bundle", str(path), "--key", "not-a-key", code=USAGE)
    assert "verifier_key" in result.output


def test_verify_bundle_requires_a_key(offline: Path) -> None:
    path = offline / "bundle.json"
    path.write_text('{"verifier_key": "k", "checkpoint": "c", "entries": []}')
    result = invoke("verify-bundle", str(path), code=USAGE)
    assert "Missing option '--key'" in result.output


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["verify-bundle", "{missing}", "--key", "{key}"], id="verify-bundle"),
        pytest.param(["verify", "--checkpoint", "{missing}"], id="verify-checkpoint"),
    ],
)
def test_a_missing_file_is_a_usage_error_everywhere(offline: Path, command: list[str]) -> None:
    missing = str(offline / "missing.json")
    invoke("policy", "validate", missing, code=USAGE)
    args = [part.format(missing=missing, key=_random_verifier_key(ORIGIN)) for part in command]
    result = invoke(*args, code=USAGE)
    assert "missing.json" in result.output


# --- checkpoints, verified independently ---------------------------------------------------


def test_checkpoint_verifies_under_the_keys_show_key(small_ledger: dict[str, int]) -> None:
    note = invoke("checkpoint").stdout
    key = invoke("keys", "show").stdout.strip()

    checkpoint = open_signed_checkpoint(note, key)

    assert checkpoint.origin == ORIGIN
    summary = invoke_json("checkpoint")
    assert summary == {
        "tree_size": checkpoint.size,
        "root": base64.b64encode(checkpoint.root).decode(),
        "note": note,
    }
    assert checkpoint.size == 6
    assert f"root {summary['root']}" in invoke("verify").stdout
    assert not signature_verifies(note, _random_verifier_key(ORIGIN))


# --- proofs, verified independently (RFC 9162) -------------------------------------------


@dataclass
class History:
    notes: dict[int, str]  # tree size -> the checkpoint printed at that size
    key: str


SAVED_SIZES = (2, 3, 4, 5, 7, 8, 11)


@pytest.fixture
def history(vkey: str) -> History:
    """A log grown one write at a time to 11 entries, with checkpoints saved on the way."""
    notes = {2: invoke("checkpoint").stdout}
    writes = [
        ["subject", "register", "p-1", "--jurisdiction", "DE"],
        *(
            ["consent", "grant" if n % 2 else "deny", "p-1", category]
            for n, category in enumerate(
                ["content.public", "profile", "activity", "location", "biometric", "profile"]
            )
        ),
        ["subject", "register", "p-2", "--jurisdiction", "US"],
        ["subject", "register", "p-3"],
    ]
    for size, args in enumerate(writes, start=3):
        invoke(*args)
        if size in SAVED_SIZES:
            notes[size] = invoke("checkpoint").stdout
    return History(notes=notes, key=vkey)


def test_every_inclusion_proof_verifies_against_the_checkpoint(history: History) -> None:
    opened = {
        size: open_signed_checkpoint(note, history.key) for size, note in history.notes.items()
    }
    assert {size: checkpoint.size for size, checkpoint in opened.items()} == {
        size: size for size in SAVED_SIZES
    }
    latest = opened[11]
    bundle = invoke_json("consent", "history", "p-1")
    canonical = {item["index"]: base64.b64decode(item["canonical"]) for item in bundle["entries"]}
    for index in range(latest.size):
        proof = invoke_json("proof", "inclusion", str(index))
        assert set(proof) == {"index", "tree_size", "leaf_hash", "hashes"}
        assert (proof["index"], proof["tree_size"]) == (index, latest.size)
        leaf = base64.b64decode(proof["leaf_hash"], validate=True)
        if index in canonical:
            assert leaf == leaf_hash(canonical[index])
        path = b64decode_all(proof["hashes"])
        assert verify_inclusion(index, latest.size, leaf, path, latest.root), index
        assert not verify_inclusion(index, latest.size, leaf, path, opened[8].root)
    # Against an older tree size, with the checkpoint saved back then.
    for index in range(5):
        proof = invoke_json("proof", "inclusion", str(index), "--tree-size", "5")
        assert proof["tree_size"] == 5
        leaf = base64.b64decode(proof["leaf_hash"])
        path = b64decode_all(proof["hashes"])
        assert verify_inclusion(index, 5, leaf, path, opened[5].root), index

    # The text output carries the same proof.
    proof = invoke_json("proof", "inclusion", "5", "--tree-size", "9")
    lines = invoke("proof", "inclusion", "5", "--tree-size", "9").stdout.splitlines()
    assert lines == [
        "index 5 in tree size 9",
        f"leaf hash {proof['leaf_hash']}",
        *proof["hashes"],
    ]


# Old sizes that are powers of two and not; new sizes that are and are not; equal sizes.
CONSISTENCY_PAIRS = [(2, 2), (2, 3), (2, 11), (3, 4), (3, 8), (3, 11), (4, 5), (4, 11),
                     (5, 8), (5, 11), (7, 8), (7, 11), (8, 11), (11, 11)]  # fmt: skip


def test_consistency_proofs_verify_between_saved_checkpoints(history: History) -> None:
    opened = {
        size: open_signed_checkpoint(note, history.key) for size, note in history.notes.items()
    }
    for old, new in CONSISTENCY_PAIRS:
        proof = invoke_json("proof", "consistency", str(old), str(new))

        assert proof.keys() == {"old_size", "new_size", "hashes"}
        assert (proof["old_size"], proof["new_size"]) == (old, new)
        path = b64decode_all(proof["hashes"])
        assert verify_consistency(old, new, opened[old].root, opened[new].root, path), (old, new)
        if old < new:
            assert not verify_consistency(old, new, opened[new].root, opened[new].root, path)

    # The text output carries the same proof.
    proof = invoke_json("proof", "consistency", "3", "11")
    lines = invoke("proof", "consistency", "3", "11").stdout.splitlines()
    assert lines == ["tree size 3 → 11", *proof["hashes"]]


def test_proofs_outside_the_tree_are_usage_errors(small_ledger: dict[str, int]) -> None:
    check_cases(
        [
            (["proof", "inclusion", "6"], USAGE, "index: index 6 is outside 0..5"),
            (["proof", "inclusion", "-1"], USAGE, "index"),
            (["proof", "inclusion", "3", "--tree-size", "3"], USAGE, "index 3 is outside 0..2"),
            (["proof", "inclusion", "0", "--tree-size", "7"], USAGE,
             "tree_size: tree size 7 is outside 0..6"),
            (["proof", "inclusion", "0", "--tree-size", "0", "--json"], USAGE, "index"),
            (["proof", "consistency", "5", "3"], USAGE, "old_size: old size 5 is outside 0..3"),
            (["proof", "consistency", "3", "7"], USAGE, "tree_size: tree size 7 is outside 0..6"),
            (["proof", "consistency", "-1", "3", "--json"], USAGE, "old_size"),
            (["proof", "consistency", "3"], USAGE, "Missing argument 'new_size'"),
        ]
    )  # fmt: skip


# --- verify -------------------------------------------------------------------------------


def test_verify_passes_on_a_healthy_ledger(small_ledger: dict[str, int], vkey: str) -> None:
    size = tree_size()
    result = invoke("verify")
    assert result.stdout.startswith(f"OK: {size} entries, {size - 1} checkpoints, 2 subjects ")

    report = invoke_json("verify")
    assert report == {
        "ok": True,
        "origin": ORIGIN,
        "entries": size,
        "checkpoints": report["checkpoints"],
        "subjects": 2,
        "root": invoke_json("checkpoint")["root"],
        "external_checkpoints": [],
    }
    assert report["checkpoints"] == size - 1  # genesis is one append of two entries
    invoke("verify", "--key", vkey)


def test_verify_with_an_untrusted_key_fails(vkey: str) -> None:
    result = invoke("verify", "--key", _random_verifier_key(ORIGIN), code=FAILURE)
    assert "verification FAILED" in result.output
    assert "never signed for this log" in result.output


def test_verify_with_saved_checkpoints_passes(vkey: str, home: Home) -> None:
    invoke("subject", "register", "p-1", "--jurisdiction", "DE")
    early = home.write("early.checkpoint", invoke("checkpoint").stdout)
    for category in ("content.public", "profile", "activity", "location", "profile.education"):
        invoke("consent", "grant", "p-1", category)
    later = home.write("later.checkpoint", invoke("checkpoint").stdout)
    for category in ("content.public", "profile", "activity"):
        invoke("consent", "deny", "p-1", category)
    latest = home.write("latest.checkpoint", invoke("checkpoint").stdout)

    result = invoke(
        "verify",
        "--checkpoint",
        str(early),
        "--checkpoint",
        str(later),
        "--checkpoint",
        str(latest),
    )
    for size in (3, 8, 11):
        assert f"consistent with saved checkpoint of size {size}" in result.stdout
    report = invoke_json("verify", "--checkpoint", str(early), "--checkpoint", str(later))
    assert report["external_checkpoints"] == [3, 8]


def test_verify_rejects_saved_checkpoints_that_are_not_this_logs(
    vkey: str, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second ledger with the same origin name but its own key and database.
    monkeypatch.setenv("CONSENT_LEDGER_HOME", str(tmp_path / "other-home"))
    monkeypatch.setenv("CONSENT_LEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    invoke("init", "--origin", ORIGIN)
    foreign = home.write("foreign.checkpoint", invoke("checkpoint").stdout)
    monkeypatch.setenv("CONSENT_LEDGER_HOME", str(home.path))
    monkeypatch.setenv("CONSENT_LEDGER_DATABASE_URL", home.database_url)

    result = invoke("verify", "--checkpoint", str(foreign), code=FAILURE)
    assert "verification FAILED" in result.output
    assert "external checkpoint #1" in result.output
    assert "not signed by any key of this log" in result.output

    junk = home.write("junk.checkpoint", "hello\n")
    result = invoke("verify", "--checkpoint", str(junk), code=FAILURE)
    assert "external checkpoint #1" in result.output
    assert "is not a checkpoint" in result.output


def test_verify_names_a_tampered_projection_row(small_ledger: dict[str, int], home: Home) -> None:
    """`consent_decisions` is a projection without triggers: change a denial to a grant."""
    seq = small_ledger["deny"]
    assert invoke_json("check", "de-anna", "content.public")["reason"] == "refused"
    home.execute("UPDATE consent_decisions SET decision = 'granted' WHERE seq = :seq", seq=seq)
    # The tamper is effective: eligibility reads the projection.
    assert invoke_json("check", "de-anna", "content.public")["reason"] == "consent"

    result = invoke("verify", code=FAILURE)

    assert "verification FAILED" in result.output
    assert f"entry {seq}" in result.output
    assert "consent_decisions" in result.output
    assert "OK" not in result.stdout


def test_verify_names_a_tampered_log_entry(small_ledger: dict[str, int], home: Home) -> None:
    """With the append-only trigger removed, rewrite an entry's canonical bytes."""
    seq = small_ledger["deny"]
    if home.database_url.startswith("sqlite"):
        disable = "DROP TRIGGER log_entries_no_update"
    else:
        disable = "ALTER TABLE log_entries DISABLE TRIGGER log_entries_append_only"
    statement = "UPDATE log_entries SET canonical = :canonical WHERE seq = :seq"
    with pytest.raises(Exception, match="append-only"):
        home.execute(statement, canonical=b"{}", seq=seq)
    canonical = bytes(home.scalar("SELECT canonical FROM log_entries WHERE seq = :seq", seq=seq))
    forged = canonical.replace(b'"denied"', b'"granted"')
    assert forged != canonical

    home.execute(disable, statement, canonical=forged, seq=seq)
    result = invoke("verify", code=FAILURE)

    assert "verification FAILED" in result.output
    assert f"entry {seq}" in result.output


@pytest.fixture
def copy_database(request: pytest.FixtureRequest, home: Home) -> Iterator[Callable[[], str]]:
    """Copy the ledger's database as it is now (a backup to roll back to); returns its URL."""
    copies: list[str] = []

    def copy() -> str:
        url = make_url(home.database_url)
        if url.get_backend_name() == "sqlite":
            source = Path(url.database or "")
            target = home.tmp_path / f"copy-{uuid.uuid4().hex[:8]}.db"
            for suffix in ("", "-wal"):
                if Path(f"{source}{suffix}").exists():
                    shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
            return f"sqlite:///{target}"
        from tests.conftest import _admin_engine

        name = f"cl_copy_{uuid.uuid4().hex[:12]}"
        admin = _admin_engine()
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{url.database}"'))
        admin.dispose()
        copies.append(name)
        return url.set(database=name).render_as_string(hide_password=False)

    yield copy
    if copies:
        from tests.conftest import _admin_engine

        admin = _admin_engine()
        with admin.connect() as connection:
            for name in copies:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_verify_with_a_saved_checkpoint_detects_rollback_and_fork(
    vkey: str, home: Home, copy_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    invoke("subject", "register", "p-1", "--jurisdiction", "DE")
    backup = copy_database()  # tree size 3
    invoke("consent", "deny", "p-1", "content.public")
    at_four = home.write("four.checkpoint", invoke("checkpoint").stdout)
    invoke("consent", "grant", "p-1", "activity")
    at_five = home.write("five.checkpoint", invoke("checkpoint").stdout)
    invoke("verify", "--checkpoint", str(at_four), "--checkpoint", str(at_five))

    # The database is restored from the backup: it verifies on its own…
    monkeypatch.setenv("CONSENT_LEDGER_DATABASE_URL", backup)
    invoke("verify")
    # …but not against a checkpoint the log signed before the rollback.
    result = invoke("verify", "--checkpoint", str(at_five), code=FAILURE)
    assert "external checkpoint #1 (size 5)" in result.output
    assert "rolled back" in result.output

    # The restored log grows differently: a fork of the one checkpoint four saw.
    invoke("consent", "grant", "p-1", "content.public")
    invoke("verify")
    result = invoke("verify", "--checkpoint", str(at_four), code=FAILURE)
    assert "external checkpoint #1 (size 4)" in result.output
    assert "forked" in result.output


# --- keys -----------------------------------------------------------------------------------


def test_keys_rotate_changes_the_key_and_verify_follows_the_chain(
    small_ledger: dict[str, int], vkey: str, home: Home
) -> None:
    saved = home.write("before.checkpoint", invoke("checkpoint").stdout)

    result = invoke("keys", "rotate")

    new_key = printed_verifier_key(result)
    assert result.stdout.startswith("new verifier key (announced in entry ")
    assert invoke("keys", "show").stdout.strip() == new_key
    assert new_key != vkey
    assert parse_verifier_key(new_key).name == ORIGIN  # the origin never changes
    # The checkpoint announcing the new key is signed by the old and the new key…
    rotation = invoke("checkpoint").stdout
    assert open_signed_checkpoint(rotation, vkey) == open_signed_checkpoint(rotation, new_key)
    # …and later ones by the new key only.
    invoke("consent", "grant", "de-anna", "location")
    latest = invoke("checkpoint").stdout
    open_signed_checkpoint(latest, new_key)
    assert not signature_verifies(latest, vkey)

    invoke("verify")
    invoke("verify", "--key", vkey)  # trust in the first key follows the chain
    invoke("verify", "--key", new_key, "--checkpoint", str(saved))

    bundle = home.write("after.json", invoke("consent", "history", "de-anna", "--json").stdout)
    assert json.loads(bundle.read_text())["verifier_key"] == new_key
    invoke("verify-bundle", str(bundle), "--key", new_key)
    assert "verification FAILED" in (
        invoke("verify-bundle", str(bundle), "--key", vkey, code=FAILURE).output
    )
    # The signing key file matches the announced key: writes still work after a restart.
    invoke("subject", "register", "late-user")
    invoke("keys", "rotate")
    invoke("verify")


def test_keys_rotate_refuses_a_home_without_the_ledger_key(
    vkey: str, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENT_LEDGER_HOME", str(home.tmp_path / "empty-home"))
    result = invoke("keys", "rotate", code=FAILURE)
    assert "error:" in result.output
    assert "Traceback" not in result.output
    monkeypatch.setenv("CONSENT_LEDGER_HOME", str(home.path))
    assert tree_size() == 2
    assert invoke("keys", "show").stdout.strip() == vkey


# --- policy ---------------------------------------------------------------------------------


def _policy_text(*, version: int, minors_eligible: bool = False) -> str:
    text_ = DEFAULT_POLICY.read_text(encoding="utf-8")
    assert "\nversion = 1\n" in text_
    assert "\nminors_eligible = false\n" in text_
    text_ = text_.replace("\nversion = 1\n", f"\nversion = {version}\n")
    if minors_eligible:
        text_ = text_.replace("\nminors_eligible = false\n", "\nminors_eligible = true\n")
    return text_


def test_policy_show(vkey: str) -> None:
    result = invoke("policy", "show")
    assert result.stdout.startswith("policy version 1")
    for expected in (
        "content.private.messages",
        "biometric.face",
        "purposes: ",
        "ai-training.generative",
        "prohibited: content.private × *",
        "minors eligible: no",
        "default default: ai-training × content.public → allow",
        "default gdpr: * × * → deny",
    ):
        assert expected in result.stdout

    document = invoke_json("policy", "show")
    assert set(document) == {
        "version",
        "categories",
        "purposes",
        "regimes",
        "prohibited",
        "special",
        "minors_eligible",
        "purge_within",
        "defaults",
    }
    assert document["version"] == 1
    assert set(document["categories"]) == {
        "content",
        "content.public",
        "content.private",
        "content.private.messages",
        "profile",
        "profile.employment",
        "profile.education",
        "biometric",
        "biometric.face",
        "biometric.voice",
        "activity",
        "location",
    }
    assert set(document["purposes"]) == {
        "ai-training",
        "ai-training.generative",
        "ai-inference",
        "data-mining",
        "third-party-sharing",
    }
    assert document["special"] == ["biometric"]
    assert document["prohibited"] == [{"category": "content.private", "purpose": "*"}]
    assert document["minors_eligible"] is False
    assert {"DE", "FR", "GB", "CH", "NO"} <= set(document["regimes"]["gdpr"])
    assert "US" not in document["regimes"]["gdpr"]
    assert document["defaults"]["default"]["ai-training"]["content.public"] == "allow"
    assert document["categories"]["biometric"]["maps_to"]["gdpr"] == ["Art. 9"]


def test_policy_validate_a_good_file(offline: Path) -> None:
    path = offline / "policy.toml"
    path.write_text(_policy_text(version=2))
    result = invoke("policy", "validate", str(path))  # offline: no ledger needed
    assert result.stdout.strip() == "policy version 2 is valid: 12 categories, 5 purposes"


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("\nminors_eligible = false\n", "\nminors_eligible = false\ncolour = 1\n", "colour"),
        ("\nversion = 2\n", '\nversion = "two"\n', "version"),
        ("\nversion = 2\n", "\nversion = 0\n", "version"),
        ("\nminors_eligible = false\n", '\nminors_eligible = "no"\n', "minors_eligible"),
        ("\nminors_eligible = false\n", "\n", "minors_eligible"),
        ('special = ["biometric"]', 'special = ["biometrics"]', "special[0]"),
        ('"activity" = "allow"', '"activity" = "maybe"', "defaults.default.ai-training.activity"),
        ('"GB", "CH",', '"GB", "CH", "ZZ",', "regimes.gdpr"),
        ('category = "content.private"', 'category = "content.secret"', "prohibited[0].category"),
        ("\nversion = 2\n", "\nversion = 2\n[[[\n", "invalid TOML"),
    ],
)
def test_policy_validate_a_bad_file_names_the_field(
    offline: Path, old: str, new: str, named: str
) -> None:
    good = _policy_text(version=2)
    assert old in good
    path = offline / "policy.toml"
    path.write_text(good.replace(old, new, 1))
    result = invoke("policy", "validate", str(path), code=USAGE)
    assert named in result.output
    assert "is valid" not in result.output


def test_policy_validate_a_missing_file(offline: Path) -> None:
    result = invoke("policy", "validate", str(offline / "nope.toml"), code=USAGE)
    assert "nope.toml" in result.output


def test_policy_publish(small_ledger: dict[str, int], home: Home) -> None:
    invoke("subject", "register", "teen-dana", "--jurisdiction", "US", "--minor")
    invoke("consent", "grant", "teen-dana", "content.public")
    before = tree_size()
    path = home.write("policy.toml", _policy_text(version=2, minors_eligible=True))

    result = invoke("policy", "publish", str(path))

    assert result.stdout.strip() == f"policy version 2 published as entry {before}"
    assert tree_size() == before + 1
    assert invoke_json("policy", "show")["version"] == 2
    assert invoke("policy", "show").stdout.startswith("policy version 2")
    # It governs every check from the next entry on; earlier sizes keep the old policy.
    answer = invoke_json("check", "teen-dana", "content.public")
    assert (answer["eligible"], answer["reason"], answer["policy_version"]) == (
        True,
        "consent",
        2,
    )
    old = invoke_json("check", "teen-dana", "content.public", "--as-of", str(before))
    assert (old["reason"], old["policy_version"]) == ("minor", 1)
    invoke("verify")

    # The same version again, or an older one, is refused and changes nothing.
    result = invoke("policy", "publish", str(path), code=FAILURE)
    assert "policy version 2 is not newer than the version in force (2)" in result.output
    older = home.write("v1.toml", _policy_text(version=1))
    result = invoke("policy", "publish", str(older), code=FAILURE)
    assert "not newer" in result.output
    assert tree_size() == before + 1


def test_policy_publish_a_bad_file_is_a_usage_error(vkey: str, home: Home) -> None:
    path = home.write("policy.toml", _policy_text(version=2).replace("version = 2", "version = -1"))
    result = invoke("policy", "publish", str(path), code=USAGE)
    assert "version" in result.output
    assert tree_size() == 2


# --- machine output -------------------------------------------------------------------------


def test_every_read_command_prints_pure_json(small_ledger: dict[str, int]) -> None:
    for args in [
        ["check", "de-anna", "content.public"],
        ["verify"],
        ["checkpoint"],
        ["subject", "show", "de-anna"],
        ["consent", "history", "de-anna"],
        ["keys", "show"],
        ["policy", "show"],
        ["proof", "inclusion", "3"],
        ["proof", "consistency", "3", "5"],
    ]:
        result = invoke(*args, "--json")
        assert isinstance(json.loads(result.stdout), dict), args


# --- user text is never read as Rich markup -----------------------------------------------


def test_user_text_is_printed_verbatim(small_ledger: dict[str, int]) -> None:
    invoke("consent", "grant", "de-anna", "location", "--notice", "[/v9]")
    check_cases(
        [
            (["subject", "register", "[/x]"], OK, "subject.registered [/x] as entry"),
            (["subject", "register", "[bold]y[/bold]"], OK, "[bold]y[/bold]"),
            (["subject", "show", "[/nobody]"], FAILURE, "subject '[/nobody]' is not registered"),
            (["check", "de-anna", "[/typo]"], USAGE, "unknown category '[/typo]'"),
            (["consent", "history", "de-anna"], OK, "[/v9]"),
        ]
    )


# --- help -----------------------------------------------------------------------------------


# The commands SPEC §5 names and this file exercises.
COMMANDS = [
    ["init"],
    ["check"],
    ["verify"],
    ["checkpoint"],
    ["verify-bundle"],
    ["subject", "register"],
    ["subject", "show"],
    ["subject", "erase"],
    ["consent", "grant"],
    ["consent", "deny"],
    ["consent", "withdraw"],
    ["consent", "history"],
    ["keys", "show"],
    ["keys", "rotate"],
    ["policy", "show"],
    ["policy", "validate"],
    ["policy", "publish"],
    ["proof", "inclusion"],
    ["proof", "consistency"],
]


def _command_paths() -> tuple[list[list[str]], list[list[str]]]:
    """Every command and every group of the app as it is now, new ones included."""
    commands: list[list[str]] = []
    groups: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        if hasattr(command, "commands"):
            groups.append(path)
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
        else:
            commands.append(path)

    walk(typer.main.get_command(app), [])
    return commands, groups


ALL_COMMANDS, ALL_GROUPS = _command_paths()


def test_every_documented_command_exists() -> None:
    assert [c for c in COMMANDS if c not in ALL_COMMANDS] == []


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert f"Usage: consent-ledger {' '.join(command)}" in result.stdout
    assert "Example" in result.stdout


@pytest.mark.parametrize("group", ALL_GROUPS, ids=lambda group: " ".join(group) or "(root)")
def test_every_group_lists_its_commands(group: list[str]) -> None:
    result = invoke(*group, "--help")
    assert "Usage: consent-ledger" in result.stdout
    for command in ALL_COMMANDS + ALL_GROUPS:
        if len(command) == len(group) + 1 and command[: len(group)] == group:
            assert command[-1] in result.stdout


def test_version() -> None:
    assert re.fullmatch(r"consent-ledger \d+\.\d+\.\d+\S*\n", invoke("--version").stdout)
