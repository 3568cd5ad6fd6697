"""Releases (pure): what left the clean room with a signed receipt, one page each for officers and
auditors. A released training or evaluation job is a release named by its job id ("j…"); a
released statistics answer is one named by an id of its own ("s…"), stored when it is answered."""

from __future__ import annotations

import enum
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.privacy import Privacy

PREFIX = "releases/"
ANSWER_PREFIX = "s"
RECEIPT_FILE = "receipt.json"
ANSWER_FILE = "answer.json"  # the name a statistics receipt gives the signed answer (the API contract's)
NOT_FOUND = "release not found"
_ID = re.compile(r"[js][0-9a-f]{16}")


class ReleaseKind(enum.Enum):
    TRAINING = "training"
    EVALUATION = "evaluation"
    STATISTICS = "statistics"


def new_answer_release_id() -> str:
    return ANSWER_PREFIX + secrets.token_hex(8)


def is_answer(release_id: str) -> bool:
    return release_id.startswith(ANSWER_PREFIX)


def release_id_from_name(name: str, field_name: str = "name") -> str:
    """"releases/{id}" -> id; anything else is the caller's mistake (INVALID_ARGUMENT)."""
    release_id = name.removeprefix(PREFIX)
    if not name.startswith(PREFIX) or not _ID.fullmatch(release_id):
        raise bad_request("expected a release name like releases/{id}", FieldViolation(field_name, "not a release name"))
    return release_id


@dataclass(frozen=True)
class ReleasedFile:
    name: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Workload:
    """What the receipt's workload hash is recomputed from: a job's model package digest and
    parameters (empty for a statistics answer) and the dataset key (an id, or a cohort's key)."""

    dataset_key: str
    model: str = ""                 # "models/{id}"
    model_sha256: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Release:
    id: str
    kind: ReleaseKind
    dataset_ids: tuple[str, ...]     # the first is the one the release is filed under
    manufacturer_id: str
    released_at: datetime
    spent: Privacy
    spend_id: str
    receipt: bytes
    files: tuple[ReleasedFile, ...]  # every released file, the receipt included
    audit_seqs: tuple[int, ...]
    source: str                      # "jobs/{id}", or the answered query's audit target
    workload: Workload
    summary: str = ""                # a statistics answer's kind ("mean", ...)

    @property
    def resource_name(self) -> str:
        return f"{PREFIX}{self.id}"
