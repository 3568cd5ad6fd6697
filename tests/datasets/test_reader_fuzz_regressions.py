"""Inputs the atheris fuzzer (proof/fuzz_targets/parquet_reader.py) found crashing the readers, kept
as regression tests: each must now be refused with the project's own value-free error."""

from __future__ import annotations

import base64
import io

import pytest

from cleanroom.datasets.readers import read_parquet_batches
from cleanroom.domain.deid import ColumnRole, ColumnSpec, ColumnType, DeidPolicy
from cleanroom.domain.errors import CleanroomError, ErrorCode

POLICY = DeidPolicy((ColumnSpec("patient", ColumnType.STRING, ColumnRole.PATIENT_KEY),), k=5)

# A dictionary-encoded column whose dictionary page claims 1 value while the data page's indices
# reach 1: pyarrow's reader returned the batch unchecked and the cast to the declared type raised
# ArrowIndexError (an upload answered INTERNAL). 440 bytes, the fuzzer's find reduced by hand.
BAD_DICTIONARY_INDEX = base64.b64decode(
    "UEFSMRUEFRQVFEwVAhUAEgAAAQAAAGEBAAAAYhUAFRIVEiwVCBUQFQYVBhwAAAACAAAACAEBAwoVBBksNQAYBnNjaGVtYRUCABUM"
    "JQIYB3BhdGllbnQlAEwcAAAAFggZHBkcJgAcFQwZNQAGEBkYB3BhdGllbnQVABYIFmgWaCY4JggpLBUEFQAVAgAVABUQFQIAPBYI"
    "GQYZJgAIAAAAFmgWCCYIFmgAGRwYDEFSUk9XOnNjaGVtYRjMAS8vLy8vNUFBQUFBUUFBQUFBQUFLQUF3QUJnQUZBQWdBQ2dBQUFB"
    "QUJCQUFFQUFBQXVQLy8vd1FBQUFBQkFBQUFGQUFBQUJBQUdBQUlBQVlBQndBTUFCQUFGQUFRQUFBQUFBQUJCUlFBQUFCRUFBQUFJ"
    "QUFBQUFRQUFBQUFBQUFBQndBQUFIQmhkR2xsYm5RQUNBQUlBQUFBQkFBSUFBQUFEQUFBQUFnQURBQUlBQWNBQ0FBQUFBQUFBQUVn"
    "QUFBQUJBQUVBQVFBQUFBPQAYIHBhcnF1ZXQtY3BwLWFycm93IHZlcnNpb24gMjYuMC4xGRwcAAAAeAEAAFBBUjE="
)


def test_a_parquet_dictionary_index_past_the_dictionary_is_refused_as_invalid_parquet() -> None:
    with pytest.raises(CleanroomError) as caught:
        list(read_parquet_batches(io.BytesIO(BAD_DICTIONARY_INDEX), POLICY))
    assert caught.value.code is ErrorCode.BAD_REQUEST
    assert caught.value.message == "the file is not a valid Parquet file"
