"""Request and response bodies, as the OpenAPI document shows them."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from ledger.consent.decisions import DEFAULT_PURPOSE
from ledger.service import EligibilityAnswer

Decision = Literal["granted", "denied", "withdrawn"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubjectBody(Strict):
    jurisdiction: str | None = Field(
        default=None, description="ISO 3166-1 alpha-2 country code, or null", max_length=8
    )
    minor: bool = False


class DecisionBody(Strict):
    category: str = Field(max_length=128, examples=["content.public"])
    purpose: str = Field(default=DEFAULT_PURPOSE, max_length=128)
    decision: Decision
    explicit: bool = False
    method: str = Field(default="api", max_length=64)
    notice: str | None = Field(default=None, max_length=512)
    effective: str | None = Field(default=None, description="RFC 3339; default now")
    expires: str | None = Field(default=None, description="RFC 3339")


class ConsentsBody(Strict):
    decisions: list[DecisionBody] = Field(min_length=1, max_length=1000)


class CheckBody(Strict):
    subject_id: str = Field(min_length=1, max_length=256)
    category: str = Field(max_length=128)
    purpose: str | None = Field(default=None, max_length=128)
    as_of: int | None = Field(default=None, ge=1)
    at: str | None = None
    at_least_as_fresh: int | None = Field(default=None, ge=0)


class BatchItem(BaseModel):
    id: Any = None
    subject_id: str
    category: str
    purpose: str | None = None


class BatchBody(BaseModel):
    purpose: str | None = None
    as_of: int | None = Field(default=None, ge=1)
    at: str | None = None
    at_least_as_fresh: int | None = Field(default=None, ge=0)
    items: list[BatchItem]


def _required_fields(view: type[Any]) -> dict[str, Any]:
    """A ledger view dataclass's fields, every one required, for `create_model`."""
    hints = get_type_hints(view)
    return {field.name: (hints[field.name], ...) for field in dataclasses.fields(view)}


# The shape of `EligibilityAnswer.to_json`, defined once by the dataclass.
EligibilityOut = create_model("EligibilityOut", **_required_fields(EligibilityAnswer))


class EvidenceEntryOut(BaseModel):
    index: int
    canonical: str
    inclusion: list[str]
    entry: dict[str, Any]


class EvidenceBundleOut(BaseModel):
    verifier_key: str
    checkpoint: str
    entries: list[EvidenceEntryOut]


class WriteOut(BaseModel):
    token: int = Field(description="Tree size after the write: pass as at_least_as_fresh")
    receipt: EvidenceBundleOut | None
