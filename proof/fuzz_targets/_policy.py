"""The declared columns the reader harnesses parse against: one of every column type."""

from __future__ import annotations

from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType, DeidPolicy

COLUMNS = (("patient", ColumnType.STRING, ColumnRole.PATIENT_KEY), ("age", ColumnType.INTEGER, ColumnRole.FEATURE),
           ("weight", ColumnType.FLOAT, ColumnRole.FEATURE), ("seen", ColumnType.DATE, ColumnRole.FEATURE),
           ("smoker", ColumnType.BOOLEAN, ColumnRole.FEATURE), ("at", ColumnType.TIMESTAMP, ColumnRole.FEATURE),
           ("label", ColumnType.INTEGER, ColumnRole.LABEL))
# Built directly (not through validate_policy): the readers read only names and types.
POLICY = DeidPolicy(tuple(ColumnSpec(name, kind, role) for name, kind, role in COLUMNS), k=5)
HEADER = ",".join(name for name, _, _ in COLUMNS)
ROWS = (
    'p1,34,71.5,2024-03-01,true,2024-03-01T10:00:00Z,1',
    'p2,,NA,2023-12-31,0,1709287200,0',
    '"p,3",90,1e3,1999-01-01,FALSE,2024-03-01T10:00:00+01:00,1',
    'p4,-1,-0.0,2000-02-29,tRuE,,0',
)
