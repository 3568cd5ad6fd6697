"""Datasets as the service knows them, and what each role may see of one."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime

from cleanroom.domain.deid import ColumnSpec
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.streams import StreamDescription, StreamIntakeSummary, StreamSpec


@dataclass(frozen=True)
class IntakeReport:
    bytes_received: int = 0
    rows_received: int = 0
    rows_stored: int = 0
    rows_without_patient_key: int = 0
    k_anonymity: int = 0
    equivalence_classes: int = 0
    classes_suppressed: int = 0
    rows_suppressed: int = 0
    dropped_columns: tuple[str, ...] = ()
    pseudonymized_columns: tuple[str, ...] = ()
    generalized_columns: tuple[tuple[str, str], ...] = ()  # (column, rule description)
    notes: tuple[str, ...] = ()
    linkage_column: str = ""  # the declared LINKAGE_ID column; "": none (patients not linked to other hospitals')
    rows_without_linkage_id: int = 0  # stored rows left unlinked (an empty linkage pseudonym)
    stream: StreamIntakeSummary | None = None  # a stream dataset's readings, spans, gaps, shifts


@dataclass(frozen=True)
class Dataset:
    """A stored dataset. `columns` is the declared schema, direct identifiers included (as dropped)."""

    id: str
    owner_id: str
    display_name: str
    description: str
    columns: tuple[ColumnSpec, ...]
    k_anonymity: int
    row_count: int
    patient_count: int
    report: IntakeReport
    ciphertext_sha256: str
    created_at: datetime
    schema_only: bool = field(default=False, compare=False)
    organisation_id: str = ""  # the owner's organisation, whose officers govern the dataset
    # A stream dataset (sealed stream table, cleanroom/crypto/sealed_table.py): what is public about
    # it; None for a table. Whoever sees the schema sees this.
    stream: StreamDescription | None = None

    @property
    def is_stream(self) -> bool:
        return self.stream is not None

    @property
    def resource_name(self) -> str:
        return f"datasets/{self.id}"


@dataclass(frozen=True)
class UploadRequest:
    """What a hospital asks to store: the upload's metadata, before any byte of the file is read."""

    display_name: str
    description: str
    file_format: str
    columns: tuple[ColumnSpec, ...]
    k_anonymity: int  # 0: the server default
    size_bytes: int   # 0: unknown
    stream: StreamSpec | None = None  # set: the file is a stream (cleanroom/domain/streams.py)


def new_dataset_id() -> str:
    return "d" + secrets.token_hex(8)


def parse_dataset_name(name: str) -> str | None:
    prefix = "datasets/"
    if not name.startswith(prefix) or len(name) == len(prefix):
        return None
    return name[len(prefix):]


def can_manage(principal: Principal, dataset: Dataset) -> bool:
    """Only the hospital that uploaded a dataset may see its details or delete it."""
    return principal.role is Role.DATA_OWNER and dataset.owner_id == principal.id


def schema_view(dataset: Dataset) -> Dataset:
    """What a manufacturer sees of a dataset shared with it: the stored schema, nothing else."""
    stored = tuple(c for c in dataset.columns if c.role.spec.stored)
    return replace(
        dataset,
        owner_id="",
        description="",
        columns=stored,
        row_count=0,
        patient_count=0,
        report=IntakeReport(),
        ciphertext_sha256="",
        schema_only=True,
    )
