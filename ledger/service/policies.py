"""The policy in force at a tree size, each published version parsed once per process."""

from __future__ import annotations

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consent.policy import Policy
from ledger.errors import InvalidInput
from ledger.store.schema import PolicyVersion
from ledger.tlog import log


class PolicyCache:
    """Published policies by version: a version's document never changes once committed."""

    def __init__(self) -> None:
        self._by_version: dict[int, Policy] = {}

    def at(self, session: Session, as_of: int) -> tuple[int, Policy]:
        """The version and policy in force at tree size `as_of` (the last published before it)."""
        row = session.execute(
            select(col(PolicyVersion.version), col(PolicyVersion.document))
            .where(col(PolicyVersion.seq) < as_of)
            .order_by(col(PolicyVersion.seq).desc())
            .limit(1)
        ).first()
        if row is None:
            raise InvalidInput(f"no policy was in force at tree size {as_of}", field="as_of")
        version, document = row
        policy = self._by_version.get(version)
        if policy is None:
            policy = Policy.from_document(orjson.loads(document))
            self._by_version[version] = policy
        return version, policy

    def current(self, session: Session) -> Policy:
        """The policy in force at the session's tree size."""
        return self.at(session, log.tree_size(session))[1]
