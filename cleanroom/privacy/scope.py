"""Which datasets an oversight principal governs: its own organisation's, or every one when it
belongs to the platform operator. A data owner (the hospital's data team) governs its own
organisation's datasets only, never platform-wide. Outside that scope a dataset is absent
(NOT_FOUND), never forbidden."""

from __future__ import annotations

from sqlalchemy.orm import Session

from cleanroom.domain.datasets import Dataset
from cleanroom.domain.errors import CleanroomError, ErrorCode
from cleanroom.domain.identity import Principal, Role
from cleanroom.domain.organisations import governs, platform_wide
from cleanroom.storage import dataset_repo

NOT_FOUND = "dataset not found"


def governs_dataset(principal: Principal, dataset: Dataset) -> bool:
    if principal.role is Role.DATA_OWNER:
        return owns_dataset(principal, dataset)
    return governs(principal.organisation_id, dataset.organisation_id)


def owns_dataset(principal: Principal, dataset: Dataset) -> bool:
    """A data owner's own upload, or one of its organisation's (as the dataset service decides)."""
    if principal.role is not Role.DATA_OWNER:
        return False
    same_organisation = bool(principal.organisation_id) and principal.organisation_id == dataset.organisation_id
    return same_organisation or dataset.owner_id == principal.id


def governed_dataset(session: Session, principal: Principal, dataset_id: str) -> Dataset:
    """The dataset, if it exists and `principal` governs it; NOT_FOUND otherwise (the same answer a
    missing dataset gets, so no hospital learns that another's dataset exists)."""
    dataset = dataset_repo.get_dataset(session, dataset_id)
    if dataset is None or not governs_dataset(principal, dataset):
        raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
    return dataset


def governed_dataset_ids(session: Session, principal: Principal) -> set[str] | None:
    """The ids of the datasets `principal` governs; None means every dataset (platform-wide)."""
    if principal.role is Role.DATA_OWNER:
        return dataset_repo.organisation_dataset_ids(session, principal.organisation_id) if principal.organisation_id else set()
    if platform_wide(principal.organisation_id):
        return None
    return dataset_repo.organisation_dataset_ids(session, principal.organisation_id)
