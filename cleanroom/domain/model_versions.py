"""Model versions as the service knows them (pure)."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class ModelState(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


@dataclass(frozen=True)
class ModelVersion:
    """Immutable once stored. `report` is the intake report, shown in full to its manufacturer."""

    id: str
    owner_id: str
    name: str
    version: str
    state: ModelState
    package_sha256: str
    task: str
    num_classes: int
    input_shape: tuple[int, ...]
    trainable: tuple[str, ...]
    report: dict[str, Any] = field(default_factory=dict, compare=False)
    created_at: datetime | None = None

    @property
    def resource_name(self) -> str:
        return f"models/{self.id}"


def new_model_id() -> str:
    return "m" + secrets.token_hex(8)


def parse_model_name(name: str) -> str | None:
    prefix = "models/"
    return name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else None
