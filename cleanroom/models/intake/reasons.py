"""Why intake refused a package: a stable short code plus words a manufacturer can act on."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Reason(enum.Enum):
    # The archive, before anything is unpacked.
    ARCHIVE_INVALID = "ARCHIVE_INVALID"
    ARCHIVE_TOO_LARGE = "ARCHIVE_TOO_LARGE"
    ARCHIVE_LINK = "ARCHIVE_LINK"
    ARCHIVE_PATH = "ARCHIVE_PATH"
    ARCHIVE_FILE_TYPE = "ARCHIVE_FILE_TYPE"
    ARCHIVE_FILE_TOO_LARGE = "ARCHIVE_FILE_TOO_LARGE"
    ARCHIVE_BOMB = "ARCHIVE_BOMB"
    ARCHIVE_DUPLICATE = "ARCHIVE_DUPLICATE"
    MANIFEST_INVALID = "MANIFEST_INVALID"
    PACKAGE_INCOMPLETE = "PACKAGE_INCOMPLETE"
    WEIGHTS_NOT_SAFETENSORS = "WEIGHTS_NOT_SAFETENSORS"
    WEIGHTS_INVALID = "WEIGHTS_INVALID"
    # Phase A.
    SANDBOX_UNAVAILABLE = "SANDBOX_UNAVAILABLE"
    SANDBOX_WALL_TIME = "SANDBOX_WALL_TIME"
    SANDBOX_MEMORY = "SANDBOX_MEMORY"
    SANDBOX_CPU_TIME = "SANDBOX_CPU_TIME"
    SANDBOX_PROCESSES = "SANDBOX_PROCESSES"
    SANDBOX_OUTPUT_TOO_LARGE = "SANDBOX_OUTPUT_TOO_LARGE"
    MODEL_FAILED = "MODEL_FAILED"
    ARTIFACT_INVALID = "ARTIFACT_INVALID"
    # Export validation.
    OP_NOT_ALLOWED = "OP_NOT_ALLOWED"
    CUSTOM_OP = "CUSTOM_OP"
    BATCH_NORM = "BATCH_NORM"
    BUFFER_MUTATION = "BUFFER_MUTATION"
    PARAMETER_MUTATION = "PARAMETER_MUTATION"
    USER_INPUT_MUTATION = "USER_INPUT_MUTATION"
    SIGNATURE_NOT_ALLOWED = "SIGNATURE_NOT_ALLOWED"
    INPUT_MISMATCH = "INPUT_MISMATCH"
    OUTPUT_SHAPE = "OUTPUT_SHAPE"
    DTYPE_NOT_ALLOWED = "DTYPE_NOT_ALLOWED"
    TOO_MANY_PARAMETERS = "TOO_MANY_PARAMETERS"
    TENSOR_TOO_LARGE = "TENSOR_TOO_LARGE"
    GRAPH_TOO_LARGE = "GRAPH_TOO_LARGE"
    NON_FINITE_WEIGHTS = "NON_FINITE_WEIGHTS"
    TRAINABLE_NO_MATCH = "TRAINABLE_NO_MATCH"
    TRAINABLE_NOT_FLOAT = "TRAINABLE_NOT_FLOAT"


@dataclass(frozen=True)
class Finding:
    code: Reason
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


class IntakeRejected(Exception):
    """Raised inside intake to stop at the first fatal stage; the service turns it into a report."""

    def __init__(self, code: Reason, message: str, *more: Finding) -> None:
        super().__init__(f"{code.value}: {message}")
        self.findings = (Finding(code, message), *more)
