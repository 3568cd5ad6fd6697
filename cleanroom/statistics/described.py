"""What statistics validation needs of a dataset, derived once from its stored description, and
the check and price of a query against it (no data, no budget: the schema is enough)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from cleanroom.domain import deid
from cleanroom.domain.datasets import Dataset
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.privacy import Privacy
from cleanroom.domain.stream_views import VIEW_KINDS, group_columns, validate_view, view_columns
from cleanroom.statistics.engine import Query, validate_query
from cleanroom.statistics.engine.codec import canonical_query
from cleanroom.statistics.engine.feasible import check_feasible
from cleanroom.statistics.engine.group_keys import check_cells, public_dims
from cleanroom.statistics.engine.plan import DEFAULT_ROWS_PER_PATIENT, make_plan
from cleanroom.statistics.engine.query import column_types

CHECKED_QUERIES = 1024  # per dataset


def query_reference(target: str, canonical: bytes) -> str:
    """The same query on the same dataset (or cohort) has the same reference (an approval names it)."""
    digest = hashlib.sha256(target.encode() + b"\x00" + canonical).hexdigest()
    return f"queries/{digest[:32]}"


@dataclass(frozen=True)
class Checked:
    """A valid query's price and names (the receipt's query digest and the approval reference)."""

    cost: Privacy
    query_sha256: str
    reference: str


def check_and_price(query: Query, schema: list[tuple[str, deid.ColumnType]] | list[tuple[str, str]], *, target: str,
                    patient_column: str | None, public_keys: dict[str, list[str]],
                    stored_as_labels: dict[str, str] | None = None, linkage_column: str | None = None) -> Checked:
    """Validation and price of a query whose row bound is settled, against a schema (a dataset's, or
    a cohort's study schema): everything the worker would refuse is refused here, before any budget moves."""
    types = column_types(schema)
    validate_query(query, schema, patient_column=patient_column, public_group_keys=public_keys, stored_as_labels=stored_as_labels,
                   linkage_column=linkage_column)
    plan = make_plan(query, types=types, public_group_keys=public_keys, default_rows_per_patient=DEFAULT_ROWS_PER_PATIENT)
    if plan.public_keys:
        check_cells(public_dims(query, types, public_keys))
    check_feasible(plan, integer=types.get(query.column or "") == "integer")
    canonical = canonical_query(query)
    return Checked(Privacy.cost(plan.epsilon, plan.delta), hashlib.sha256(canonical).hexdigest(), query_reference(target, canonical))


@dataclass(frozen=True)
class Described:
    """What validation needs of a dataset, derived once from its stored description."""

    dataset: Dataset
    schema: list[tuple[str, deid.ColumnType]]
    types: dict[str, str]
    public_keys: dict[str, list[str]]
    patient_column: str
    linkage_column: str | None        # the stored linkage pseudonyms: never a query's column
    stored_as_labels: dict[str, str]  # generalised column -> why it is text, for clearer refusals

    checks: dict[Query, Checked] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, dataset: Dataset) -> Described:
        stored = deid.stored_schema(dataset.columns)
        schema = [(c.name, c.type) for c in stored]
        labelled = {c.name: reason for c in stored if (reason := deid.stored_as_labels(c))}
        return cls(dataset, schema, column_types(schema), public_group_keys(dataset), patient_column(dataset),
                   deid.linkage_column(dataset.columns), labelled)

    def checked(self, query: Query) -> Checked:
        """Validation and price of a query with its row bound settled. They follow from the query and
        the dataset's schema alone, so a query seen before on this dataset is not checked again."""
        try:
            known = self.checks.get(query)
        except TypeError:  # a filter with a list value: not hashable, checked every time
            return self._check(query)
        if known is None:
            known = self._check(query)
            if len(self.checks) >= CHECKED_QUERIES:
                self.checks.clear()
            self.checks[query] = known
        return known

    def _check(self, query: Query) -> Checked:
        schema, public_keys = self.frame(query)
        return check_and_price(query, schema, target=self.dataset.id, patient_column=self.patient_column,
                               public_keys=public_keys, stored_as_labels=self.stored_as_labels,
                               linkage_column=self.linkage_column)

    def frame(self, query: Query) -> tuple[list[tuple[str, deid.ColumnType]], dict[str, list[str]]]:
        """The table a query reads, as (schema, public group keys): the dataset's, or over a stream the
        stream view's derived columns (cleanroom.domain.stream_views). A stream is never queried
        reading by reading, and a table has no views: either mistake is refused by field."""
        stream, view = self.dataset.stream, query.stream_view
        if stream is None:
            if view is not None:
                raise bad_request("the statistics query is invalid",
                                  FieldViolation("stream_view", "only a query over a stream dataset names a stream view"))
            return self.schema, self.public_keys
        if view is None:
            raise bad_request("the statistics query is invalid",
                              FieldViolation("stream_view", "a query over a stream names a stream view: " + ", ".join(VIEW_KINDS)))
        violations = validate_view(view, stream)
        if violations:
            raise bad_request("the statistics query is invalid", *violations)
        columns = view_columns(view, self.dataset.columns, stream)
        return [(c.name, c.type) for c in columns], {c.name: self.public_keys[c.name] for c in columns if c.name in self.public_keys}


def public_group_keys(dataset: Dataset) -> dict[str, list[str]]:
    """Key spaces that follow from the schema alone. An age band's labels come from its rule, and a
    column's declared categories from the data owner's declaration (intake refused any other
    value), so a grouping by either answers every key (empty ones too, with noise) without a
    τ-threshold or δ. Never from the data: a key list read from the rows would reveal them."""
    bands = {c.name: c.generalization.labels() for c in dataset.columns
             if c.role.spec.treatment is deid.Treatment.GENERALIZE and isinstance(c.generalization, deid.AgeBand)}
    declared = {c.name: list(c.categories) for c in deid.stored_schema(dataset.columns) if c.categories}
    return {**bands, **declared}


def patient_column(dataset: Dataset) -> str:
    return next(c.name for c in dataset.columns if c.role.spec.privacy_unit)


def stream_settings(dataset: Dataset) -> dict[str, object] | None:
    """What the statistics worker needs to derive views from a stream's sealed table; None for a table."""
    if dataset.stream is None:
        return None
    return {"time_column": dataset.stream.time_column, "time_resolution_seconds": dataset.stream.time_resolution_seconds,
            "group_columns": [c.name for c in group_columns(dataset.columns, dataset.stream)]}
