"""Inputs the atheris fuzzer (proof/fuzz_targets/program.py) found crashing the exported-program
checks, kept as regression tests: each must now be an IntakeRejected, never another exception."""

from __future__ import annotations

import json

import pytest
from torch._export.serde.schema import SCHEMA_VERSION

from cleanroom.models.intake.artifact import _split_tensors
from cleanroom.models.intake.program_json import vet_program_json
from cleanroom.models.intake.reasons import IntakeRejected, Reason

# The fuzzer changed one byte of an exported MLP's graph signature, "parameter_name" -> "parame[er_name":
# program_json checks a parameter's name only where the key is present, and _split_tensors then
# raised KeyError (a submission whose phase A wrote this answered INTERNAL). The signature entry as
# the fuzzer left it, inside the smallest program _split_tensors reads.
SIGNATURE_WITHOUT_NAME = b'{"graph_module": {"signature": {"input_specs": [' \
                         b'{"parameter": {"arg": {"name": "p_0_bias"}, "parame[er_name": "0.bias"}}]}}}'


@pytest.mark.parametrize("body", [SIGNATURE_WITHOUT_NAME, SIGNATURE_WITHOUT_NAME.replace(b'parame[er_name": "0.bias"', b'parameter_name": 7'),
                                  b'{"graph_module": {"signature": {"input_specs": [{"buffer": []}]}}}'],
                         ids=["name-misspelt", "name-not-text", "body-not-a-map"])
def test_a_lifted_input_without_its_name_is_refused_as_an_invalid_artifact(body: bytes) -> None:
    with pytest.raises(IntakeRejected) as caught:
        _split_tensors({}, json.loads(body))
    assert caught.value.findings[0].code is Reason.ARTIFACT_INVALID


# A tensor value whose own "tensor_values" key held `false` (the fuzzer flipped a nested key): the
# name check iterated it and raised TypeError (INTERNAL). Reduced by hand to the smallest program
# that reaches the check; the schema version is this torch's, as the vetting requires.
TENSOR_VALUES_NOT_A_MAP = (
    b'{"graph_module": {"graph": {"nodes": [], "tensor_values": false}, "signature": {}, "module_call_graph": [],'
    b' "metadata": {}, "treespec_namedtuple_fields": {}}, "opset_version": {"aten": 1}, "range_constraints": {},'
    b' "schema_version": {"major": %d, "minor": %d}, "verifiers": [], "torch_version": "2", "guards_code": []}'
) % SCHEMA_VERSION


def test_tensor_values_that_are_not_a_map_are_refused() -> None:
    with pytest.raises(IntakeRejected) as caught:
        vet_program_json(TENSOR_VALUES_NOT_A_MAP.decode(), max_nodes=10)
    assert caught.value.findings[0].code is Reason.ARTIFACT_INVALID
