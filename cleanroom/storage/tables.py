"""SQLAlchemy 2 table models. Rows stay in storage; the *_repo modules convert them to domain objects."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class OrganisationRow(Base):
    """A hospital, a manufacturer or the platform operator (migration 0010)."""

    __tablename__ = "organisations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PrincipalRow(Base):
    __tablename__ = "principals"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    organisation_id: Mapped[str] = mapped_column(String(32), index=True, default="")


class TokenRow(Base):
    """One issued bearer token (its SHA-256 only); `principals.token_hash` is the first one's."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_by: Mapped[str] = mapped_column(String(64), default="")


class ConsoleLoginRow(Base):
    """A web-console sign-in bound to one principal (migration 0013): a scrypt password hash and
    the hash of the current one-time code (derived from the token root, never stored)."""

    __tablename__ = "console_logins"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), unique=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    code_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    code_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    code_generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(64), default="")


class DatasetRow(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    display_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    columns_json: Mapped[str] = mapped_column(Text)
    k_anonymity: Mapped[int] = mapped_column(Integer)
    row_count: Mapped[int] = mapped_column(BigInteger)
    patient_count: Mapped[int] = mapped_column(BigInteger)
    report_json: Mapped[str] = mapped_column(Text)
    ciphertext_sha256: Mapped[str] = mapped_column(String(64))
    # The data key wrapped by the KEK; NULL once the dataset is deleted (crypto-shredded).
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    organisation_id: Mapped[str] = mapped_column(String(32), index=True, default="")  # the owner's (0010)
    # A stream dataset's public description (domain.streams.StreamDescription) as JSON; "" for a table (0011).
    stream_json: Mapped[str] = mapped_column(Text, default="")


class IdempotencyRow(Base):
    """The first answer to each (principal, method, request_id); `response` is NULL while in flight."""

    __tablename__ = "idempotency"

    principal_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    method: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    response: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    owner: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)  # the claiming server (0009)


class SecretRow(Base):
    """Service secrets (e.g. the pseudonymisation root key), always wrapped by the KEK."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)


# --- privacy budgets, ledger and approvals (migration 0002) -------------------------------------


class ShareRow(Base):
    """A dataset shared with a manufacturer by a privacy officer: the manufacturer may see its schema."""

    __tablename__ = "shares"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    manufacturer_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), primary_key=True, index=True)
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # active, paused (no new reservations) or withdrawn (final); who set it last, when, why (0014)
    state: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    state_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    state_by: Mapped[str] = mapped_column(String(32), default="", server_default="")
    state_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class BudgetRow(Base):
    """Exact amounts: ε in micro-units, δ in atto-units. reserved + spent <= cap, always."""

    __tablename__ = "budgets"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    manufacturer_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    cap_epsilon: Mapped[int] = mapped_column(BigInteger)
    cap_delta: Mapped[int] = mapped_column(BigInteger)
    reserved_epsilon: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    spent_epsilon: Mapped[int] = mapped_column(BigInteger, default=0)
    spent_delta: Mapped[int] = mapped_column(BigInteger, default=0)


class SpendRow(Base):
    __tablename__ = "spends"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(32), index=True)
    manufacturer_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), index=True)
    reserved_epsilon: Mapped[int] = mapped_column(BigInteger)
    reserved_delta: Mapped[int] = mapped_column(BigInteger)
    committed_epsilon: Mapped[int] = mapped_column(BigInteger, default=0)
    committed_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    mechanism_json: Mapped[str] = mapped_column(Text)
    decrypted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The attested workload this reservation pays for; the key broker releases a key only for it.
    workload: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    owner: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)  # the reserving server (0009)
    cohort_json: Mapped[str] = mapped_column(Text, default="[]")  # a cohort's other datasets (0010)


class LedgerEventRow(Base):
    """Append-only: rows are inserted, never updated or deleted."""

    __tablename__ = "ledger_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    spend_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    dataset_id: Mapped[str] = mapped_column(String(32), index=True)
    manufacturer_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    budget_ids: Mapped[str] = mapped_column(Text)
    epsilon: Mapped[int] = mapped_column(BigInteger)
    delta: Mapped[int] = mapped_column(BigInteger)
    actor_id: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    mechanism_json: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)


class PrivacyRequestRow(Base):
    __tablename__ = "privacy_requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(32), index=True)
    manufacturer_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(100))
    cost_epsilon: Mapped[int] = mapped_column(BigInteger)
    cost_delta: Mapped[int] = mapped_column(BigInteger)
    mechanism_json: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    spend_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    decided_by: Mapped[str] = mapped_column(String(32), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    workload: Mapped[str | None] = mapped_column(String(64), nullable=True)
    group_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)  # a cohort request's rows (0010)
    approvals_required: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # the policy's at submission (0014)
    work_json: Mapped[str] = mapped_column(Text, default="", server_default="")  # what it would run, for officers (0017)


class RequestApprovalRow(Base):
    """One officer's approval of a privacy request (two-officer policies: each officer once) (0014)."""

    __tablename__ = "request_approvals"

    request_id: Mapped[str] = mapped_column(ForeignKey("privacy_requests.id"), primary_key=True)
    officer_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(Text, default="")


class ApprovalPolicyRow(Base):
    __tablename__ = "approval_policies"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    max_epsilon: Mapped[int] = mapped_column(BigInteger)
    max_delta: Mapped[int] = mapped_column(BigInteger)
    auto_approve_epsilon: Mapped[int] = mapped_column(BigInteger)
    stats_rows_per_patient: Mapped[int] = mapped_column(Integer, default=1)
    require_privacy_audit: Mapped[bool] = mapped_column(Boolean, default=False)
    approvals_required: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # (0014)


class AuditEntryRow(Base):
    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(200), index=True)
    details_json: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """One row: the chain's last (seq, hash). Locking it serialises appends on every backend."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


# --- model versions and attestation (migration 0003) ----------------------------------------------


class ModelRow(Base):
    """An immutable model version; its exported program is sealed in the blob store like a dataset."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    package_sha256: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(40))
    num_classes: Mapped[int] = mapped_column(Integer)
    input_shape_json: Mapped[str] = mapped_column(Text)
    trainable_json: Mapped[str] = mapped_column(Text)
    report_json: Mapped[str] = mapped_column(Text)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UsedNonceRow(Base):
    """Quote nonces the key broker has honoured: a unique insert is the atomic replay check."""

    __tablename__ = "used_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    used_at: Mapped[datetime] = mapped_column(UTCDateTime())


# --- DP jobs (migration 0004) -------------------------------------------------------------------


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    model_id: Mapped[str] = mapped_column(String(32))
    dataset_id: Mapped[str] = mapped_column(String(32))
    spec_json: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(24), index=True)
    failure: Mapped[str] = mapped_column(String(32))
    privacy_request_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    spend_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    workload: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)  # the server running it (0009)
    artifacts_json: Mapped[str] = mapped_column(Text, default="[]")
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AnswerReleaseRow(Base):
    """A released statistics answer, kept for its release page: the signed answer and receipt as
    returned, what it spent and the audit entries it produced (migration 0016)."""

    __tablename__ = "answer_releases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    manufacturer_id: Mapped[str] = mapped_column(String(32), index=True)
    dataset_id: Mapped[str] = mapped_column(String(32), index=True)  # the first site's
    datasets_json: Mapped[str] = mapped_column(Text)  # every site's id, in request order
    kind: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(200))
    spend_id: Mapped[str] = mapped_column(String(32))
    epsilon: Mapped[int] = mapped_column(BigInteger)
    delta: Mapped[int] = mapped_column(BigInteger)
    answer_json: Mapped[bytes] = mapped_column(LargeBinary)
    receipt: Mapped[bytes] = mapped_column(LargeBinary)
    audit_seqs_json: Mapped[str] = mapped_column(Text)
    released_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StorageIdentityRow(Base):
    """This database's identity and its blob store's (one row, id 1); see storage/identity.py."""

    __tablename__ = "storage_identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    database_id: Mapped[str] = mapped_column(String(32))
    blob_store_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ServerLeaseRow(Base):
    """One row per running server process; past `expires_at` its work in flight is a dead server's (0009)."""

    __tablename__ = "server_leases"

    instance_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class NotificationRow(Base):
    """The notification outbox (0015): one message per event key and channel, delivered by whichever
    replica claims it (claimed_by until claim_expires_at), retried at next_attempt_at."""

    __tablename__ = "notification_outbox"
    __table_args__ = (UniqueConstraint("event_key", "channel", name="uq_notification_outbox_event_channel"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_key: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(300))
    text: Mapped[str] = mapped_column(Text)
    facts_json: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending, sent or abandoned
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    claim_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(String(300), default="")
