"""De-identification of uploaded files: the names callers import, from two modules.

    cleanroom.datasets.readers     CSV and Parquet files -> Arrow batches typed as declared
    cleanroom.datasets.transforms  pseudonyms, generalisation, k-anonymity, the identifier scan

Errors never carry a data value; row numbers count data rows from 1, header excluded.
"""

from __future__ import annotations

import hmac  # tests count HMACs through this module's name

from cleanroom.datasets.pseudonyms import (
    LINKAGE_PREFIX,
    MIN_KEY_BYTES,
    PSEUDONYM_HEX_CHARS,
    LinkageChecker,
    LinkagePseudonymizer,
    Pseudonymizer,
    normalise_linkage_id,
)
from cleanroom.datasets.readers import (
    CSV_NULL_VALUES,
    MAX_ROW_BYTES,
    CsvBlock,
    CsvLayout,
    _check_columns,
    _csv_error,
    _typed_batch,
    arrow_schema_for,
    csv_blocks,
    parse_csv_blocks,
    read_csv_batches,
    read_parquet_batches,
)
from cleanroom.datasets.transforms import (
    DeidBatchResult,
    EquivalenceClassCounter,
    SmallClasses,
    class_keys,
    deidentify_batch,
    scan_for_identifiers,
    stored_arrow_schema,
    suppress_small_classes,
    unlinked_rows,
)
from cleanroom.datasets.typed import ARROW_TYPES, cast_column, column_field

_ARROW_TYPES = ARROW_TYPES  # the names this module had before the split
_cast_column = cast_column
_column_field = column_field

__all__ = [
    "CSV_NULL_VALUES",
    "MAX_ROW_BYTES",
    "CsvBlock",
    "CsvLayout",
    "_check_columns",
    "_csv_error",
    "_typed_batch",
    "arrow_schema_for",
    "csv_blocks",
    "parse_csv_blocks",
    "read_csv_batches",
    "read_parquet_batches",
    "ARROW_TYPES",
    "LINKAGE_PREFIX",
    "MIN_KEY_BYTES",
    "PSEUDONYM_HEX_CHARS",
    "DeidBatchResult",
    "EquivalenceClassCounter",
    "LinkageChecker",
    "LinkagePseudonymizer",
    "Pseudonymizer",
    "SmallClasses",
    "cast_column",
    "class_keys",
    "column_field",
    "deidentify_batch",
    "normalise_linkage_id",
    "scan_for_identifiers",
    "stored_arrow_schema",
    "suppress_small_classes",
    "unlinked_rows",
    "hmac",
    "_ARROW_TYPES",
    "_cast_column",
    "_column_field",
]
