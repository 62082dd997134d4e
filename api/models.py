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


# --- datasets (SPEC §7) -------------------------------------------------------------------

# An obligation's status as listings show it (`ledger.consent.datasets.STATUSES`): `overdue`
# is an open one past its due time.
ObligationStatus = Literal["open", "overdue", "fulfilled", "cancelled"]


class ObligationCounts(BaseModel):
    open: int = Field(description="Open, overdue ones included")
    overdue: int
    fulfilled: int
    cancelled: int


class BuildOut(BaseModel):
    dataset: str
    version: str
    purpose: str
    seq: int = Field(description="The `dataset.recorded` entry")
    time: str
    records: int = Field(description="Members when recorded")
    members: int = Field(description="Members now")
    purged: int
    retired: int | None = Field(description="The `dataset.retired` entry, if retired")
    checked_at: int = Field(description="The tree size the records were checked at")
    at: str = Field(description="The time they were checked at")
    policy_version: int
    members_root: str = Field(description="RFC 9162 root over the members' leaves (base64)")
    obligations: ObligationCounts


class BuildsOut(BaseModel):
    builds: list[BuildOut]


class BuildReceiptOut(BaseModel):
    build: BuildOut
    receipt: EvidenceBundleOut = Field(description="The `dataset.recorded` entry")


class MemberLeafOut(BaseModel):
    category: str | list[str] = Field(description="The category, or the sorted list of several")
    purpose: str
    record: str
    subject: str = Field(description="The subject's ref (never its id)")


class MemberProofOut(BaseModel):
    dataset: str
    version: str
    leaf: MemberLeafOut = Field(description="Leaf hash: RFC 9162 over its canonical JSON")
    index: int
    records: int = Field(description="Leaves in the tree of `members_root`")
    hashes: list[str] = Field(description="The inclusion proof (base64)")
    entry: EvidenceBundleOut = Field(description="The `dataset.recorded` entry")


class ObligationOut(BaseModel):
    dataset: str
    version: str
    record_id: str | None = Field(description="null once an erased subject's record is purged")
    reason: str = Field(description="Why it stopped being eligible (SPEC §3.4), or `expired`")
    cause: int = Field(description="The entry that made it ineligible")
    cause_time: str
    due: str
    status: ObligationStatus
    closed_by: int | None = Field(description="The entry that closed it")
    closed_time: str | None


class ObligationsOut(BaseModel):
    obligations: list[ObligationOut]
    next: int | None = Field(description="Pass as `after` for the next page; null at the end")


class PurgeBody(Strict):
    # Each id is validated by the ledger, as a build's are (an integer is its decimal
    # string), so that an error names it as `record_ids[i]`.
    record_ids: list[Any] = Field(
        min_length=1,
        description="Members to remove",
        json_schema_extra={"items": {"type": "string", "minLength": 1, "maxLength": 256}},
    )


class PurgeOut(BaseModel):
    dataset: str
    version: str
    seq: int = Field(description="The `dataset.purged` entry")
    records: int
    fulfils: int = Field(description="Records whose open obligation this purge closed")
    voluntary: int = Field(description="Records purged with no obligation")
    purged_root: str = Field(description="RFC 9162 root over the purged records' leaves")
    receipt: EvidenceBundleOut


class RetireOut(BaseModel):
    dataset: str
    version: str
    seq: int = Field(description="The `dataset.retired` entry")
    fulfils: int = Field(description="Open obligations the retirement closed")
    receipt: EvidenceBundleOut


class SubjectBuildOut(BaseModel):
    dataset: str
    version: str
    purpose: str
    records: list[str]
    obligations: list[ObligationOut] = Field(description="The open ones")


class SubjectDatasetsOut(BaseModel):
    subject_id: str
    datasets: list[SubjectBuildOut]
