"""Column-role behaviour lives in one table (cleanroom.domain.deid.ROLE_SPECS): every role has an
entry, and what intake, validation and the stored schema do follows from it."""

from __future__ import annotations

from cleanroom.domain.deid import ROLE_SPECS, AgeBand, ColumnRole, ColumnSpec, ColumnType, Treatment, stored_schema


def test_every_role_has_one_spec_and_one_role_is_the_privacy_unit() -> None:
    assert set(ROLE_SPECS) == set(ColumnRole)
    assert [role for role in ColumnRole if role.spec.privacy_unit] == [ColumnRole.PATIENT_KEY]


def test_the_stored_schema_follows_each_role_s_treatment() -> None:
    columns = (
        ColumnSpec("name", ColumnType.STRING, ColumnRole.DIRECT_IDENTIFIER),
        ColumnSpec("pid", ColumnType.INTEGER, ColumnRole.PATIENT_KEY),
        ColumnSpec("age", ColumnType.INTEGER, ColumnRole.QUASI_IDENTIFIER, AgeBand(10)),
        ColumnSpec("hr", ColumnType.FLOAT, ColumnRole.FEATURE),
        ColumnSpec("y", ColumnType.BOOLEAN, ColumnRole.LABEL),
    )
    stored = {c.name: c.type for c in stored_schema(columns)}
    assert stored == {"pid": ColumnType.STRING, "age": ColumnType.STRING, "hr": ColumnType.FLOAT, "y": ColumnType.BOOLEAN}
    assert {c.name for c in columns if c.role.spec.treatment is Treatment.DROP} == {"name"}
    assert {c.name for c in columns if c.role.spec.scanned_for_identifiers} == {"age", "hr", "y"}
