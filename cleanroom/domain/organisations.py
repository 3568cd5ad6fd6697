"""Organisations: every principal belongs to one (a hospital, a manufacturer, the platform operator).

Pure rules only. A hospital's datasets are governed by its own privacy officers and read by its own
data teams and auditors; the operator's officers, auditors and admins act platform-wide. Across
organisations a resource is absent (NOT_FOUND), never forbidden.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from datetime import datetime

# The platform operator's organisation. Migration 0010 puts every existing officer, auditor and
# admin in it, so a deployment keeps the global oversight it had before organisations existed.
OPERATOR_ID = "operator"


class OrgKind(enum.Enum):
    HOSPITAL = "hospital"
    MANUFACTURER = "manufacturer"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Organisation:
    id: str
    display_name: str
    kind: OrgKind
    created_at: datetime

    @property
    def resource_name(self) -> str:
        return f"organisations/{self.id}"


def new_organisation_id() -> str:
    return "o" + secrets.token_hex(8)


def platform_wide(organisation_id: str) -> bool:
    """Officers, auditors and admins of the operator act on every organisation's resources."""
    return organisation_id == OPERATOR_ID


def governs(principal_organisation_id: str, resource_organisation_id: str) -> bool:
    """Whether an oversight principal (officer, auditor, data owner) of `principal_organisation_id`
    may see and act on a resource of `resource_organisation_id`."""
    return platform_wide(principal_organisation_id) or principal_organisation_id == resource_organisation_id
