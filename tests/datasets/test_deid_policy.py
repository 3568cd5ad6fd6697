"""Validation of de-identification policies (cleanroom.domain.deid), pure Python."""

from __future__ import annotations

import pytest

from cleanroom.domain.deid import (
    AgeBand,
    ColumnRole,
    ColumnSpec,
    ColumnType,
    DateTruncation,
    DeidPolicy,
    PrefixTruncation,
    Suppress,
    stored_columns,
    validate_policy,
)
from cleanroom.domain.errors import CleanroomError, ErrorCode

T, R = ColumnType, ColumnRole


def key(name: str = "pid", type_: ColumnType = T.STRING) -> ColumnSpec:
    return ColumnSpec(name, type_, R.PATIENT_KEY)


def qi(name: str, type_: ColumnType, rule) -> ColumnSpec:
    return ColumnSpec(name, type_, R.QUASI_IDENTIFIER, rule)


def feature(name: str, type_: ColumnType = T.FLOAT) -> ColumnSpec:
    return ColumnSpec(name, type_, R.FEATURE)


def violations_of(columns, k: int = 5) -> set[tuple[str, str]]:
    with pytest.raises(CleanroomError) as caught:
        validate_policy(columns, k)
    assert caught.value.code is ErrorCode.BAD_REQUEST
    return {(v.field, v.description) for v in caught.value.violations}


def fields_of(columns, k: int = 5) -> list[str]:
    return sorted(field for field, _ in violations_of(columns, k))


def test_a_complete_policy_validates():
    columns = [
        ColumnSpec("name", T.STRING, R.DIRECT_IDENTIFIER),
        key(),
        qi("age", T.INTEGER, AgeBand(10)),
        qi("visit", T.DATE, DateTruncation("month")),
        qi("zip", T.STRING, PrefixTruncation(3)),
        qi("sex", T.STRING, Suppress()),
        feature("hr"),
        ColumnSpec("outcome", T.BOOLEAN, R.LABEL),
    ]
    policy = validate_policy(columns, 5)
    assert isinstance(policy, DeidPolicy)
    assert policy.k == 5 and policy.patient_key.name == "pid"
    assert [c.name for c in policy.quasi_identifiers] == ["age", "visit", "zip", "sex"]


def test_no_columns():
    assert fields_of([]) == ["columns", "columns"]  # none declared, and so no patient key


def test_empty_and_duplicate_names():
    assert fields_of([key(), feature(""), feature("hr"), feature("hr")]) == [
        "columns[1]", "columns[hr]"]


def test_unspecified_type_and_role():
    found = violations_of([key(), ColumnSpec("x", None, None)])
    assert found == {("columns[x]", "the column type is unspecified"),
                     ("columns[x]", "the column role is unspecified")}


@pytest.mark.parametrize("keys", [0, 2])
def test_exactly_one_patient_key(keys):
    columns = [key(f"pid{i}") for i in range(keys)] + [feature("hr")]
    assert violations_of(columns) == {
        ("columns", f"exactly one column must have role PATIENT_KEY; {keys} do")}


def test_patient_key_declared_as_direct_identifier_leaves_no_key():
    columns = [ColumnSpec("pid", T.STRING, R.DIRECT_IDENTIFIER), feature("hr")]
    assert fields_of(columns) == ["columns"]


@pytest.mark.parametrize("type_", [T.FLOAT, T.DATE, T.BOOLEAN])
def test_patient_key_type(type_):
    assert fields_of([key(type_=type_)]) == ["columns[pid]"]


def test_quasi_identifier_needs_a_generalization():
    assert violations_of([key(), qi("age", T.INTEGER, None)]) == {
        ("columns[age]", "a quasi-identifier needs a generalization")}


@pytest.mark.parametrize("role", [R.FEATURE, R.LABEL, R.DIRECT_IDENTIFIER, R.PATIENT_KEY])
def test_generalization_only_on_quasi_identifiers(role):
    other = [] if role is R.PATIENT_KEY else [key()]
    columns = other + [ColumnSpec("age", T.INTEGER, role, AgeBand(10))]
    assert "columns[age]" in fields_of(columns)


@pytest.mark.parametrize("column", [
    qi("age", T.STRING, AgeBand(10)),
    qi("age", T.DATE, AgeBand(10)),
    qi("age", T.INTEGER, DateTruncation("year")),
    qi("age", T.FLOAT, PrefixTruncation(2)),
    qi("age", T.BOOLEAN, PrefixTruncation(2)),
])
def test_rule_must_fit_the_column_type(column):
    assert fields_of([key(), column]) == ["columns[age]"]


@pytest.mark.parametrize("column", [
    qi("age", T.FLOAT, AgeBand(10)),
    qi("visit", T.STRING, DateTruncation("month")),
    qi("zip", T.INTEGER, PrefixTruncation(0)),
    qi("any", T.BOOLEAN, Suppress()),
])
def test_rules_accepted_on_their_types(column):
    validate_policy([key(), column], 2)


@pytest.mark.parametrize("rule", [AgeBand(0), AgeBand(-5), AgeBand(10, top_code=0),
                                  DateTruncation("day"), PrefixTruncation(-1)])
def test_rule_parameters(rule):
    type_ = T.INTEGER if isinstance(rule, AgeBand) else T.DATE
    type_ = T.STRING if isinstance(rule, PrefixTruncation) else type_
    assert fields_of([key(), qi("q", type_, rule)]) == ["columns[q]"]


def test_unknown_generalization_object():
    assert fields_of([key(), qi("q", T.STRING, "suppress")]) == ["columns[q]"]


@pytest.mark.parametrize("k", [1, 0, -3, 1001, True, 2.5])
def test_k_bounds(k):
    assert fields_of([key()], k) == ["policy.k_anonymity"]


@pytest.mark.parametrize("k", [2, 1000])
def test_k_bounds_inclusive(k):
    assert validate_policy([key()], k).k == k


def test_every_violation_is_reported_at_once():
    columns = [
        ColumnSpec("a", T.STRING, R.DIRECT_IDENTIFIER),
        ColumnSpec("a", T.STRING, R.DIRECT_IDENTIFIER),
        qi("age", T.STRING, AgeBand(0)),
        feature("hr", None),
        ColumnSpec("zip", T.STRING, R.FEATURE, PrefixTruncation(2)),
    ]
    assert fields_of(columns, k=1) == [
        "columns",  # no patient key
        "columns[a]",  # declared twice
        "columns[age]", "columns[age]",  # width and type
        "columns[hr]",
        "columns[zip]",
        "policy.k_anonymity",
    ]


def test_describe_rules():
    assert AgeBand(10).describe() == "age band of 10 years, 90+"
    assert AgeBand(5, 85).describe() == "age band of 5 years, 85+"
    assert DateTruncation("month").describe() == "date truncated to the month"
    assert PrefixTruncation(3).describe() == "first 3 characters kept, the rest masked"
    assert "*" in Suppress().describe()


def test_stored_columns_drop_identifiers_and_stringify_keys_and_quasi_identifiers():
    policy = validate_policy([
        feature("hr"),
        ColumnSpec("name", T.STRING, R.DIRECT_IDENTIFIER),
        key("pid", T.INTEGER),
        qi("age", T.INTEGER, AgeBand(10)),
        ColumnSpec("y", T.BOOLEAN, R.LABEL),
    ], 5)
    stored = stored_columns(policy)
    assert [(c.name, c.type, c.role) for c in stored] == [
        ("hr", T.FLOAT, R.FEATURE),
        ("pid", T.STRING, R.PATIENT_KEY),
        ("age", T.STRING, R.QUASI_IDENTIFIER),
        ("y", T.BOOLEAN, R.LABEL),
    ]
    assert stored[2].generalization == AgeBand(10)


def test_enum_numbers_match_the_proto():
    from cleanroom.v1 import datasets_pb2

    for member in T:
        assert datasets_pb2.ColumnType.Value(member.name) == member.value
    for member in R:
        assert datasets_pb2.ColumnRole.Value(member.name) == member.value


def test_domain_module_imports_no_transport_or_storage():
    import ast
    import pathlib

    import cleanroom.domain.deid as deid

    tree = ast.parse(pathlib.Path(deid.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported.isdisjoint({"pyarrow", "grpc", "sqlalchemy", "torch"})
