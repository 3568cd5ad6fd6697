"""Inputs the atheris fuzzer (proof/fuzz_targets/program.py) found crashing the exported-program
checks, kept as regression tests: each must now be an IntakeRejected, never another exception."""

from __future__ import annotations

import json

import pytest

from cleanroom.models.intake.artifact import _split_tensors
from cleanroom.models.intake.reasons import IntakeRejected, Reason

# The fuzzer changed one byte of an exported MLP's graph signature, "parameter_name" -> "parame[er_name":
# program_json checks a parameter's name only where the key is present, and _split_tensors then
# raised KeyError (a submission whose phase A wrote this answered INTERNAL). The signature entry as
# the fuzzer left it, inside the smallest program _split_tensors reads.
SIGNATURE_WITHOUT_NAME = b'{"graph_module": {"signature": {"input_specs": [' \
                         b'{"parameter": {"arg": {"name": "p_0_bias"}, "parame[er_name": "0.bias"}}]}}}'


@pytest.mark.parametrize("body", [SIGNATURE_WITHOUT_NAME, SIGNATURE_WITHOUT_NAME.replace(b'parame[er_name": "0.bias"', b'parameter_name": 7'),
                                  b'{"graph_module": {"signature": {"input_specs": [{"buffer": []}]}}}'])
def test_a_lifted_input_without_its_name_is_refused_as_an_invalid_artifact(body: bytes) -> None:
    with pytest.raises(IntakeRejected) as caught:
        _split_tensors({}, json.loads(body))
    assert caught.value.findings[0].code is Reason.ARTIFACT_INVALID
