"""Receiving the ledger's webhooks (SPEC §8): check a delivery's Standard Webhooks
signature, then, optionally, the proof of every event it carries.

    receiver = WebhookReceiver(os.environ["LEDGER_WEBHOOK_SECRET"], trust=ledger)

    @app.post("/ledger-events")
    async def ledger_events(request: Request) -> Response:
        try:
            delivery = receiver.receive(await request.body(), request.headers)
        except WebhookSignatureError:
            return Response(status_code=401)
        for event in delivery.events:
            if event.seq >= cursor.load():      # a redelivery holds what you have done
                act_on(event)
        cursor.save(delivery.next)
        return Response(status_code=204)

Deliveries come at least once and in order: a delivery that got no 2xx answer (or
whose answer was lost) comes again, with the same `webhook-id` and the same events.
Make handling idempotent: either remember the `webhook-id`s already handled (for
longer than the ledger retries, at least 24 h), or, simpler since deliveries are
ordered, keep the `next` cursor of the last delivery handled and skip events below
it. Answer 2xx only once the events are safely handled; answering an error makes
the ledger retry with backoff.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from standardwebhooks import Webhook, WebhookVerificationError

from consent_ledger_client._kernel.tlog.notes import Checkpoint, VerifierKey
from consent_ledger_client.changes import ChangeEvent, verify_changes
from consent_ledger_client.core import ConsentLedgerClient
from consent_ledger_client.errors import ProtocolError, VerificationError
from consent_ledger_client.trust import TrustedLog, parse_verifier_keys

__all__ = ["CHANGES_TYPE", "WebhookDelivery", "WebhookReceiver", "WebhookSignatureError"]

Trust = ConsentLedgerClient | TrustedLog | str | VerifierKey | Sequence[str | VerifierKey]
"""What verifies a delivery's events: a client's trust store, or the ledger's key(s)."""

# The `type` of a delivery of feed events; other types (a test ping) carry no events.
CHANGES_TYPE: Final = "consent-ledger.changes"


class WebhookSignatureError(VerificationError):
    """A delivery's Standard Webhooks signature is missing, wrong, or its timestamp is
    more than 5 minutes away from now (a replay): answer 401 and drop it."""


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """A delivery whose signature has been checked.

    `id` is its `webhook-id` (the same for every redelivery of the same batch),
    `timestamp` its `webhook-timestamp` (seconds), `type` and `data` its body's.
    For a delivery of feed events (`type` ``consent-ledger.changes``), `next` is the
    cursor after them and `events` the verified events when the receiver has a
    trust store (`checkpoint` is then the checkpoint they were proven into);
    without one, `events` is empty and `data["events"]` holds them unverified.
    """

    id: str
    timestamp: int
    type: str
    data: dict[str, Any]
    events: tuple[ChangeEvent, ...] = ()
    checkpoint: Checkpoint | None = None
    body: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def next(self) -> int | None:
        cursor = self.data.get("next")
        return cursor if isinstance(cursor, int) and not isinstance(cursor, bool) else None


class WebhookReceiver:
    """Checks deliveries to one endpoint: its signing secret, and what to trust.

    `secret` is the endpoint's signing secret as `consent-ledger webhooks add`
    printed it (``whsec_`` and base64), or its raw bytes. `trust` verifies the
    events of each delivery: a `ConsentLedgerClient` (its trust store: signature
    and consistency with what it trusted before), a `TrustedLog`, or the ledger's
    verifier key(s) (signatures only). Without `trust` only the webhook signature
    is checked, which proves the delivery came from whoever holds the secret, not
    that its events are the log's.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        trust: Trust | None = None,
    ) -> None:
        self._webhook = Webhook(secret)
        self._trust = _trusted_log(trust)

    def receive(self, body: bytes | str, headers: Mapping[str, str]) -> WebhookDelivery:
        """Check a delivery (the raw body exactly as received, and its headers).

        Raises `WebhookSignatureError` for a bad signature, `VerificationError` for
        events that are not proven by the signed log, `ProtocolError` for a body
        that is not a delivery.
        """
        # 1. The signature over id, timestamp and body, with the endpoint's secret.
        lowered = {name.lower(): value for name, value in headers.items()}
        try:
            self._webhook.verify(body, lowered, json_parse=False)
        except WebhookVerificationError as exc:
            raise WebhookSignatureError(str(exc), subject="webhook-signature") from exc
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError("a webhook delivery's body is not JSON") from exc
        if not isinstance(document, dict):
            raise ProtocolError("a webhook delivery's body is not a JSON object")
        kind, data = document.get("type"), document.get("data")
        if not isinstance(kind, str) or not isinstance(data, dict):
            raise ProtocolError("a webhook delivery's body has no `type` and `data` object")
        delivery = WebhookDelivery(
            id=lowered["webhook-id"],
            timestamp=int(float(lowered["webhook-timestamp"])),
            type=kind,
            data=data,
            body=document,
        )
        # 2. Its events, proven into a checkpoint signed by the ledger's key.
        if kind != CHANGES_TYPE or self._trust is None:
            return delivery
        verified = verify_changes(data, self._trust)
        return WebhookDelivery(
            id=delivery.id,
            timestamp=delivery.timestamp,
            type=kind,
            data=data,
            events=verified.events,
            checkpoint=verified.checkpoint,
            body=document,
        )


def _trusted_log(
    trust: ConsentLedgerClient
    | TrustedLog
    | str
    | VerifierKey
    | Sequence[str | VerifierKey]
    | None,
) -> TrustedLog | None:
    if trust is None or isinstance(trust, TrustedLog):
        return trust
    if isinstance(trust, ConsentLedgerClient):
        return trust.trust
    return TrustedLog(parse_verifier_keys(trust))
