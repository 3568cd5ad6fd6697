"""Inputs the atheris fuzzer (proof/fuzz_targets/safetensors_header.py) found crashing the
safetensors header check, kept as regression tests: each must now be a SafetensorsError."""

from __future__ import annotations

import pytest

from cleanroom.models.intake.safetensors_check import SafetensorsError, check_safetensors

# A tensor whose dtype is a JSON list: `dtype not in DTYPE_BYTES` raised TypeError (unhashable), not
# SafetensorsError (a package with these weights answered INTERNAL). The fuzzer's input (128 bytes).
DTYPE_IS_A_LIST = (b'x\x00\x00\x00\x00\x00\x00\x00{"empty":{"dtype":"I64","shape":[0,2],"data_offsets":[0,0]},'
                   b'"fty":{"dtype":[0,1],"shape":[0,1],"data_offsets":[0,1]}}   ')


def test_a_dtype_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(SafetensorsError, match="dtype"):
        check_safetensors(DTYPE_IS_A_LIST, max_header_bytes=1 << 16, max_tensors=64)
