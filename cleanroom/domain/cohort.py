"""Cohorts: one request over several hospitals' datasets (pure).

A cohort names its sites in order. Each site is a dataset shared with the requester, a mapping from
the study's column names onto that dataset's own column names (hospitals name columns differently),
and a role: TRAIN (the model learns from it; in an evaluation, a site the requester says the model
saw) or VALIDATE (held out whole: the model never sees it).

The privacy unit across sites is the person. A site that declared a linkage column gives each row
the platform-wide linkage pseudonym derived at intake, so the same person at two such sites is one
unit and is sampled, bounded and clipped once. A site without linkage keeps its patients as
distinct units, qualified by the site, and every estimate and report says so.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_SITES = 32


class SiteRole(enum.Enum):
    TRAIN = "train"
    VALIDATE = "validate"


@dataclass(frozen=True)
class CohortSite:
    dataset_id: str
    # (study column name, this dataset's column name), sorted by study name; a study name left out
    # maps to the same name at this site.
    columns: tuple[tuple[str, str], ...] = ()
    role: SiteRole = SiteRole.TRAIN

    def column_for(self, study_name: str) -> str:
        return dict(self.columns).get(study_name, study_name)

    def to_json(self) -> dict[str, object]:
        return {"dataset": self.dataset_id, "columns": dict(self.columns), "role": self.role.value}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> CohortSite:
        columns = data.get("columns") or {}
        if not isinstance(columns, Mapping):
            raise ValueError("a cohort site's columns must be a mapping")
        return cls(str(data["dataset"]), tuple(sorted((str(k), str(v)) for k, v in columns.items())),
                   SiteRole(str(data.get("role") or SiteRole.TRAIN.value)))


def make_site(dataset_id: str, columns: Mapping[str, str] | None = None, role: SiteRole = SiteRole.TRAIN) -> CohortSite:
    """A site with its mapping in canonical (sorted) order, so equal requests hash equally."""
    return CohortSite(dataset_id, tuple(sorted((columns or {}).items())), role)


def cohort_key(dataset_ids: Iterable[str]) -> str:
    """A stable name for the set of datasets a cohort reads (a workload's dataset argument, a
    statistics worker's key): order-free, so the same datasets in another order are one cohort."""
    digest = hashlib.sha256("\x00".join(sorted(dataset_ids)).encode()).hexdigest()
    return f"cohort-{digest[:24]}"


def unit_key(site_index: int, patient: str, linkage: str | None) -> str:
    """The privacy unit of one row: the linkage pseudonym when the row's site declared linkage (one
    person at two linked sites is one unit), else the patient pseudonym qualified by its site (the
    same pseudonym text at two unlinked sites is two people)."""
    return f"L:{linkage}" if linkage else f"S{site_index}:{patient}"


def linkage_statement(site_names: list[str], linked: list[bool]) -> str:
    """What an estimate and a report say about who counts as one person."""
    with_link = [n for n, ok in zip(site_names, linked, strict=True) if ok]
    without = [n for n, ok in zip(site_names, linked, strict=True) if not ok]
    if not without:
        return "every site declared a linkage column: a person treated at several sites is one privacy unit"
    if len(with_link) < 2:
        return ("patients of different sites are distinct privacy units (no two sites declared a linkage column): "
                "a person treated at two sites counts as two people, each bounded separately")
    return (f"patients are linked across {', '.join(with_link)} only; patients of {', '.join(without)} "
            "are distinct privacy units, bounded separately")
