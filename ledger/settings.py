"""Settings, read from the environment (prefix `CONSENT_LEDGER_`) by pydantic-settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONSENT_LEDGER_", extra="ignore")

    home: Path = Field(
        default=Path(".consent-ledger"),
        description="Directory holding signing keys and secrets (0700); never the database.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: SQLite file ledger.db in home. "
        "PostgreSQL: postgresql+psycopg://user@host/db",
    )
    key_passphrase: SecretStr | None = Field(
        default=None, description="Encrypts the signing key at rest when set."
    )
    public_log: bool = Field(
        default=False, description="Serve the /tlog/ read path without authentication."
    )
    batch_max_items: int = Field(default=10_000, ge=1)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    obligation_sweep_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Seconds between sweeps of purge obligations while `serve` runs "
        "(decisions taking effect or expiring, a policy's re-evaluation); 0 turns it off.",
    )
    feed_heartbeat_seconds: float = Field(
        # Below the 15 s ceiling by a margin: a wait ends a little late (the head read,
        # a busy event loop), and a heartbeat must never be.
        default=10.0,
        gt=0,
        le=14.0,
        description="Most seconds an idle change-feed stream stays silent before a heartbeat "
        "line (SPEC §8: at least every 15 s; proxies drop connections silent for longer).",
    )
    subject_cache_mb: int = Field(
        default=160,
        ge=0,
        description="Memory for subjects' eligibility inputs kept between checks, per process.",
    )

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None
        url = url.strip()
        # Platforms hand out `postgres://` URLs; SQLAlchemy needs the driver named,
        # and psycopg 3 is the one this project supports.
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        if not url.startswith(("sqlite", "postgresql+psycopg://")):
            raise ValueError(
                "CONSENT_LEDGER_DATABASE_URL must be sqlite:///… or postgresql+psycopg://…"
            )
        return url

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'ledger.db').absolute()}"

    @property
    def passphrase(self) -> str | None:
        return self.key_passphrase.get_secret_value() if self.key_passphrase else None
