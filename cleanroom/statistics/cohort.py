"""A statistics query over a cohort: several hospitals' datasets read as one table.

The query names study columns; each site maps them onto its own columns (a name a site does not map
is its own column there). Checked before any budget moves, from the stored schemas alone: every
column the query uses exists at every site with one type, a grouping's public key space is the same
at every site, no query column is a site's patient key or linkage column, and every site's own
rules pass (each site's translated query goes through the same validation as a one-dataset query).
The worker then reads the "study table": every study column present at every site with one type,
the sites' rows one after another, each row's privacy unit from domain.cohort.unit_key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cleanroom.domain import deid
from cleanroom.domain.cohort import CohortSite, cohort_key, linkage_statement
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.privacy import Privacy
from cleanroom.jobs.release import dataset_commitment
from cleanroom.statistics.described import Described, check_and_price
from cleanroom.statistics.engine import Query
from cleanroom.statistics.engine.kinds import kind_spec
from cleanroom.storage import audit_repo

# The study table's privacy-unit column: no stored column can have this name (a NUL never passes intake).
UNIT_COLUMN = "\x00unit"


@dataclass(frozen=True)
class CohortPriced:
    """A cohort query checked against every site and priced, before any budget moves."""

    sites: tuple[CohortSite, ...]
    described: tuple[Described, ...]
    query: Query                                   # study names, its per-person row bound settled
    site_columns: tuple[dict[str, str], ...]       # per site: study name -> this site's column
    schema: list[tuple[str, deid.ColumnType]]      # the study table's columns
    public_keys: dict[str, list[str]]              # study names whose key space every site declares alike
    cost: Privacy                                  # charged to every site
    query_sha256: str
    reference: str
    key: str                                       # the warm worker's: the datasets and their mapping

    @property
    def dataset_ids(self) -> list[str]:
        return [s.dataset_id for s in self.sites]

    @property
    def cohort(self) -> str:
        """The cohort key of its datasets (the workload's dataset argument)."""
        return cohort_key(self.dataset_ids)

    def linkage(self) -> str:
        return linkage_statement([d.dataset.resource_name for d in self.described],
                                 [d.linkage_column is not None for d in self.described])

    def audit_records(self, actor: str, action: str, spent: Privacy, spend_id: str) -> list[audit_repo.Record]:
        """One entry per site, targeted at that site's dataset and naming no other (each hospital reads its own part)."""
        details = {"kind": self.query.kind, "epsilon": spent.epsilon_value, "delta": spent.delta_value, "spend": spend_id,
                   "cohort": self.cohort, "sites": len(self.sites)}
        return [audit_repo.Record(actor, action, f"{facts.dataset.resource_name}/{self.reference}", details) for facts in self.described]

    def commitment(self) -> str:
        """What the receipt commits to: every site's ciphertext, in site order (as a cohort job's does)."""
        return dataset_commitment([(d.dataset.id, d.dataset.ciphertext_sha256) for d in self.described], cohort=True)


def price_cohort(sites: Sequence[CohortSite], described: Sequence[Described], rows_per_patient: Sequence[int],
                 query: Query) -> CohortPriced:
    """Check `query` over the sites (raises BAD_REQUEST naming fields and sites, never values) and
    price it. A query that sets no row bound gets the smallest of the sites' policies."""
    if query.max_rows_per_patient is None:
        query = dataclasses.replace(query, max_rows_per_patient=min(rows_per_patient))
    _check_sites(sites, described, query)
    site_columns = tuple(_view(site, facts) for site, facts in zip(sites, described, strict=True))
    schema, public = _study_schema(site_columns, described)
    key = _worker_key(sites)
    checked = check_and_price(query, schema, target=key, patient_column=UNIT_COLUMN, public_keys=public)
    shared = {name for name, _ in schema}
    columns = tuple({s: c for s, c in view.items() if s in shared} for view in site_columns)
    return CohortPriced(tuple(sites), tuple(described), query, columns, schema, public, checked.cost, checked.query_sha256,
                        checked.reference, key)


def used_columns(query: Query) -> list[str]:
    """Every study column a query reads: the measured one, the group key, the filters'."""
    names = [query.column, query.group_by, *(f.column for f in query.filters)]
    return list(dict.fromkeys(n for n in names if isinstance(n, str)))


def translated(query: Query, site: CohortSite) -> Query:
    """The query in one site's own column names."""
    filters = tuple(dataclasses.replace(f, column=site.column_for(f.column)) if isinstance(f.column, str) else f
                    for f in query.filters)
    return dataclasses.replace(query, column=query.column and site.column_for(query.column),
                               group_by=query.group_by and site.column_for(query.group_by), filters=filters)


def _check_sites(sites: Sequence[CohortSite], described: Sequence[Described], query: Query) -> None:
    """Every study column found at every site, with one type and one public key space across the
    sites; then each site's own rules on the query in its own column names (a study name mapped onto
    a patient key or linkage column is refused there, by the same check as on one dataset)."""
    used = used_columns(query)
    missing = [v for index, (site, facts) in enumerate(zip(sites, described, strict=True))
               for v in _missing_columns(index, site, facts, used)]
    if missing:
        raise bad_request("the cohort query names a column some site does not have", *missing)
    differing = _type_violations(sites, described, used) + _key_space_violations(sites, described, _keyed_columns(query))
    if differing:
        raise bad_request("the cohort's sites disagree on a column the query uses", *differing)
    for site, facts in zip(sites, described, strict=True):
        facts.checked(translated(query, site))


def _missing_columns(index: int, site: CohortSite, facts: Described, used: list[str]) -> list[FieldViolation]:
    name = facts.dataset.resource_name
    return [FieldViolation(f"cohort[{index}].columns", f"study column {study} maps to no column of {name}")
            for study in used if site.column_for(study) not in facts.types]


def _type_violations(sites: Sequence[CohortSite], described: Sequence[Described], used: list[str]) -> list[FieldViolation]:
    found = []
    first, first_facts = sites[0], described[0]
    for study in used:
        want = first_facts.types[first.column_for(study)]
        for site, facts in zip(sites[1:], described[1:]):
            have = facts.types[site.column_for(study)]
            if have != want:
                found.append(FieldViolation("cohort", f"study column {study} is {want} at {first_facts.dataset.resource_name} "
                                                      f"but {have} at {facts.dataset.resource_name}"))
    return found


def _keyed_columns(query: Query) -> list[str]:
    """Study columns whose values become answer keys: the group key, and a histogram's column without bins."""
    keyed = [query.group_by] if query.group_by else []
    if query.column and kind_spec(query.kind).binned and query.bins is None:
        keyed.append(query.column)
    return keyed


def _key_space_violations(sites: Sequence[CohortSite], described: Sequence[Described], keyed: list[str]) -> list[FieldViolation]:
    """A public key space (declared categories, age bands) answers every key with noise; only if every
    site declares the same one is it public for the cohort."""
    found = []
    for study in keyed:
        spaces = [facts.public_keys.get(site.column_for(study)) for site, facts in zip(sites, described)]
        for facts, space in zip(described[1:], spaces[1:]):
            if space != spaces[0]:
                found.append(FieldViolation("cohort", f"study column {study} has different group keys at "
                                                      f"{described[0].dataset.resource_name} and {facts.dataset.resource_name} "
                                                      "(declared categories or age bands must be equal)"))
                break
    return found


def _view(site: CohortSite, facts: Described) -> dict[str, str]:
    """Study name -> column at this site, for every column it has (its patient key and linkage column never)."""
    mapped = dict(site.columns)
    hidden = {facts.patient_column, facts.linkage_column}
    view = {study: column for study, column in mapped.items() if column in facts.types}
    for column in facts.types:  # an unmapped column keeps its name, unless a study name claims it or it is mapped away
        if column not in mapped and column not in mapped.values():
            view[column] = column
    return {study: column for study, column in view.items() if column not in hidden}


def _study_schema(views: tuple[dict[str, str], ...], described: Sequence[Described]
                  ) -> tuple[list[tuple[str, deid.ColumnType]], dict[str, list[str]]]:
    """The study columns every site has with one type, and their key spaces where every site agrees."""
    schemas = [dict(facts.schema) for facts in described]
    schema, public = [], {}
    for study in sorted(set.intersection(*(set(v) for v in views))):
        types = [schemas[i][views[i][study]] for i in range(len(views))]
        if any(t != types[0] for t in types):
            continue
        schema.append((study, types[0]))
        spaces = [facts.public_keys.get(views[i][study]) for i, facts in enumerate(described)]
        if spaces[0] is not None and all(s == spaces[0] for s in spaces):
            public[study] = list(spaces[0])
    return schema, public


def _worker_key(sites: Sequence[CohortSite]) -> str:
    """The datasets (order-free) and how each maps the study's names: one warm worker per such cohort."""
    mapping = json.dumps(sorted([s.dataset_id, list(map(list, s.columns))] for s in sites), separators=(",", ":"))
    return f"{cohort_key(s.dataset_id for s in sites)}-{hashlib.sha256(mapping.encode()).hexdigest()[:16]}"
