"""A cohort's sites as the SDK takes them: several hospitals' datasets in one job request."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc

from cleanroom.sdk.errors import CleanroomClientError
from cleanroom.v1 import common_pb2

ROLES = {"train": common_pb2.SITE_ROLE_TRAIN, "validate": common_pb2.SITE_ROLE_VALIDATE}


@dataclass(frozen=True)
class Site:
    """One hospital's dataset in a cohort request.

    `dataset`: "datasets/{id}", shared with you. `columns`: the study's column name (the names in
    the request's feature_columns and label_column) -> this dataset's own column name; a study name
    left out keeps its name here. `role`: "train" (the model learns from it; in an evaluation, a site
    the model saw) or "validate" (held out whole: the model never sees it).
    """

    dataset: str
    columns: Mapping[str, str] = field(default_factory=dict)
    role: str = "train"

    def to_proto(self) -> common_pb2.CohortSite:
        if self.role not in ROLES:
            raise CleanroomClientError(grpc.StatusCode.INVALID_ARGUMENT, f"a site's role is one of {', '.join(ROLES)}, not {self.role!r}")
        return common_pb2.CohortSite(dataset=self.dataset, columns=dict(self.columns), role=ROLES[self.role])


def cohort_protos(sites: Iterable[Site | common_pb2.CohortSite]) -> list[common_pb2.CohortSite]:
    return [site if isinstance(site, common_pb2.CohortSite) else site.to_proto() for site in sites]


def parse_site(text: str, *, with_role: bool = True) -> Site:
    """`DATASET[:train|validate][,STUDY=COLUMN...]` as a Site (the CLI's --site). Without `with_role`
    (statistics read every site alike) the role part is not accepted. Raises ValueError."""
    head, *pairs = [part.strip() for part in text.split(",")]
    dataset, colon, role = head.partition(":")
    shape = f"DATASET{'[:train|validate]' if with_role else ''}[,STUDY=COLUMN...]"
    if colon and not with_role:
        raise ValueError(f"expected {shape}, not {text!r}")
    if role and role not in ROLES:
        raise ValueError(f"a site's role is train or validate, not {role!r}")
    columns = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    if not dataset or len(columns) != len([p for p in pairs if p]) or not all(k.strip() and v.strip() for k, v in columns.items()):
        raise ValueError(f"expected {shape}, not {text!r}")
    return Site(dataset, {k.strip(): v.strip() for k, v in columns.items()}, role or "train")
