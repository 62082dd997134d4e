"""The signed envelope every report travels in, and how to get it back out of a file.

A report document is ``{"report": CONTENT, "signature": {...}}``. The signature
is a C2SP signed note by the ledger's key over this text::

    consent-ledger report v1
    origin <origin>
    kind <subject|period>
    sha256 <base64 SHA-256 of the RFC 8785 canonical bytes of CONTENT>

The note's second line is never a decimal number, so no checkpoint parser (ours
or Go's, which allows extension lines) can mistake a report signature for a
checkpoint signed by the same key. ``signature.verifier_key`` and
``signature.sha256`` are hints for a reader; only the note is trusted, and only
under a key the verifier supplies.

HTML reports embed the same document in ``<script type="application/json"
id="consent-ledger-report">``; `load_document` reads either form.
"""

from __future__ import annotations

import gc
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ledger.errors import InvalidInput, VerificationError
from ledger.tlog.canonical import canonical_bytes
from ledger.tlog.notes import NoteSigner, VerifierKey, b64, sign_note, verify_note

REPORT_FORMAT = "consent-ledger/report/v1"
NOTE_HEADER = "consent-ledger report v1"
KINDS = ("subject", "period")
SCRIPT_ID = "consent-ledger-report"
RENDERING_HEADER = "consent-ledger report rendering v1"
PLACEHOLDER = "@@CONSENT-LEDGER-REPORT@@"

_SCRIPT = re.compile(
    r'<script type="application/json" id="' + SCRIPT_ID + r'">(?P<body>.*?)</script>',
    re.DOTALL,
)


def content_digest(content: dict[str, Any], entries: Sequence[bytes] | None = None) -> bytes:
    """SHA-256 of the RFC 8785 canonical bytes of a report's content.

    A period report carries up to millions of log entries; `entries` may give
    their canonical bytes (each already RFC 8785), which are spliced into the
    canonical bytes of the rest. That is the same byte string, since JCS
    serialises every nested object on its own; it only saves re-encoding them.
    """
    if entries is None:
        raw = content.get("entries")
        if isinstance(raw, list) and raw and all(isinstance(item, dict) for item in raw):
            entries = [canonical_bytes(item) for item in raw]
    if entries is None:
        return hashlib.sha256(canonical_bytes(content)).digest()
    marker = f"entries-{secrets.token_hex(16)}"
    skeleton = canonical_bytes({**content, "entries": marker})
    parts = skeleton.split(f'"{marker}"'.encode())
    if len(parts) != 2:
        return hashlib.sha256(canonical_bytes(content)).digest()
    digest = hashlib.sha256(parts[0])
    digest.update(b"[")
    for position, item in enumerate(entries):
        if position:
            digest.update(b",")
        digest.update(item)
    digest.update(b"]")
    digest.update(parts[1])
    return digest.digest()


def note_text(origin: str, kind: str, digest: bytes) -> str:
    return f"{NOTE_HEADER}\norigin {origin}\nkind {kind}\nsha256 {b64(digest)}\n"


def sign_report(
    content: dict[str, Any], signer: NoteSigner, entries: Sequence[bytes] | None = None
) -> dict[str, Any]:
    """Wrap `content` (which names its origin and kind) in a signed document."""
    digest = content_digest(content, entries)
    note = sign_note(note_text(content["origin"], content["kind"], digest), [signer])
    return {
        "report": content,
        "signature": {
            "note": note,
            "verifier_key": str(signer.verifier_key),
            "sha256": b64(digest),
        },
    }


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    origin: str
    kind: str
    digest: str
    signed_by: tuple[str, ...]


def check_signature(
    document: dict[str, Any],
    keys: Sequence[VerifierKey],
    entries: Sequence[bytes] | None = None,
) -> SignatureCheck:
    """Steps 1 and 2 of verify-report: the note verifies and names this content's hash."""
    content = document.get("report")
    signature = document.get("signature")
    if not isinstance(content, dict):
        raise VerificationError("missing or not an object", subject="report")
    if not isinstance(signature, dict) or not isinstance(signature.get("note"), str):
        raise VerificationError("missing signature note", subject="signature")
    if content.get("format") != REPORT_FORMAT:
        raise VerificationError(
            f"unknown format {content.get('format')!r}, expected {REPORT_FORMAT!r}",
            subject="report",
        )
    try:
        note, signers = verify_note(signature["note"], keys)
    except VerificationError as exc:
        raise VerificationError(
            f"the report's signature does not verify under the given key: {exc}",
            subject="signature",
        ) from exc
    lines = note.text[:-1].split("\n")
    if len(lines) != 4 or lines[0] != NOTE_HEADER:
        raise VerificationError("the signed note is not a report signature", subject="signature")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(" ")
        fields[name] = value
    if set(fields) != {"origin", "kind", "sha256"}:
        raise VerificationError("the signed note is not a report signature", subject="signature")
    if fields["kind"] not in KINDS or fields["kind"] != content.get("kind"):
        raise VerificationError(
            f"the signature is for a {fields['kind']!r} report, the content says "
            f"{content.get('kind')!r}",
            subject="signature",
        )
    if fields["origin"] != content.get("origin"):
        raise VerificationError(
            f"the signature names origin {fields['origin']!r}, the content "
            f"{content.get('origin')!r}",
            subject="signature",
        )
    for key in signers:
        if key.name != fields["origin"]:
            raise VerificationError(
                f"signed by key {key.name!r}, not by the log {fields['origin']!r}",
                subject="signature",
            )
    try:
        digest = b64(content_digest(content, entries))
    except InvalidInput as exc:
        raise VerificationError(f"content is not canonicalisable: {exc}", subject="report") from exc
    if digest != fields["sha256"]:
        raise VerificationError(
            f"content changed after signing: its SHA-256 is {digest}, the signature covers "
            f"{fields['sha256']}",
            subject="report",
        )
    return SignatureCheck(
        origin=fields["origin"],
        kind=fields["kind"],
        digest=digest,
        signed_by=tuple(str(key) for key in signers),
    )


def dumps_document(document: dict[str, Any], *, indent: bool = True) -> bytes:
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(document, option=option)


def embed_in_script(document: dict[str, Any]) -> str:
    """The document as the body of a `<script type="application/json">` element.

    `<`, `>` and `&` are written as JSON escapes, so no text inside can close the
    element or be read as markup, and the JSON parses to the same value.
    """
    text = orjson.dumps(document).decode()
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def rendering_text(origin: str, content_sha256: str, page_digest: bytes) -> str:
    return (
        f"{RENDERING_HEADER}\norigin {origin}\nreport {content_sha256}\nhtml {b64(page_digest)}\n"
    )


def page_digest(page: str) -> bytes:
    """SHA-256 of an HTML page whose embedded report is replaced by `PLACEHOLDER`."""
    return hashlib.sha256(page.encode("utf-8")).digest()


def seal_page(page: str, document: dict[str, Any], signer: NoteSigner) -> str:
    """Sign an HTML rendering and embed the signed report in it.

    `page` holds `PLACEHOLDER` exactly once, inside the report's script element.
    The rendering note covers every byte of the page around the embedded report,
    so changing any visible byte of the HTML fails verify-report too.
    """
    if page.count(PLACEHOLDER) != 1:
        raise InvalidInput("the page must hold the report placeholder exactly once")
    content = document["report"]
    note = sign_note(
        rendering_text(content["origin"], document["signature"]["sha256"], page_digest(page)),
        [signer],
    )
    embedded = {**document, "rendering": {"note": note}}
    return page.replace(PLACEHOLDER, embed_in_script(embedded))


@dataclass(frozen=True, slots=True)
class LoadedReport:
    document: dict[str, Any]
    # For HTML: the page with its embedded report replaced by PLACEHOLDER.
    page: str | None = None


def load_document(data: bytes) -> LoadedReport:
    """A report document from the bytes of a JSON or HTML report file."""
    if data.lstrip()[:1] == b"{":
        try:
            gc.disable()
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"not valid JSON: {exc}", field="report") from exc
        finally:
            gc.enable()
        if not isinstance(document, dict):
            raise InvalidInput("a report is a JSON object", field="report")
        return LoadedReport(document)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("neither JSON nor UTF-8 HTML", field="report") from exc
    matches = list(_SCRIPT.finditer(text))
    if not matches:
        raise InvalidInput(
            f'no <script type="application/json" id="{SCRIPT_ID}"> element: not a JSON or '
            "HTML report (a CSV report carries no signature: verify the JSON or HTML one)",
            field="report",
        )
    if len(matches) > 1:
        raise VerificationError("the HTML holds more than one embedded report", subject="report")
    match = matches[0]
    try:
        document = orjson.loads(match.group("body"))
    except orjson.JSONDecodeError as exc:
        raise VerificationError(f"embedded report is not JSON: {exc}", subject="report") from exc
    if not isinstance(document, dict):
        raise VerificationError("the embedded report is not a JSON object", subject="report")
    page = text[: match.start("body")] + PLACEHOLDER + text[match.end("body") :]
    return LoadedReport(document, page)


def check_rendering(
    loaded: LoadedReport, signature: SignatureCheck, keys: Sequence[VerifierKey]
) -> None:
    """For an HTML report: the page around the embedded report is the one that was signed."""
    if loaded.page is None:
        return
    rendering = loaded.document.get("rendering")
    if not isinstance(rendering, dict) or not isinstance(rendering.get("note"), str):
        raise VerificationError("the HTML carries no signed rendering note", subject="html")
    try:
        note, _ = verify_note(rendering["note"], keys)
    except VerificationError as exc:
        raise VerificationError(
            f"rendering signature does not verify: {exc}", subject="html"
        ) from exc
    expected = rendering_text(signature.origin, signature.digest, page_digest(loaded.page))
    if note.text != expected:
        raise VerificationError(
            "the page was changed after signing: its visible HTML is not what the ledger "
            "rendered for this report",
            subject="html",
        )
