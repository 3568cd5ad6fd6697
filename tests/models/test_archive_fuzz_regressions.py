"""Inputs the atheris fuzzer (proof/fuzz_targets/archive.py) found crashing the package checks, kept
as regression tests: each must now be refused with an IntakeRejected naming the reason."""

from __future__ import annotations

import base64

import pytest

from cleanroom.models.intake.limits import IntakeLimits
from cleanroom.models.intake.package import load_package
from cleanroom.models.intake.reasons import IntakeRejected, Reason

# A zip whose first entry is named "\x00alcnroom-model.toml": zipfile cuts a name at its first NUL,
# so the entry's name is "", and ZipInfo.is_dir() raised IndexError (a submission answered
# INTERNAL). The fuzzer's input, as found (339 bytes).
EMPTY_ENTRY_NAME = base64.b64decode(
    "UEsDBBQAAAAYAAAAIQDn6S3p1n0yk0HwouXIiUU7jGn14eUah9VeGkGp/gAAAAAAAAAAAKSBAAAAAGNsZWFucm9vbS1tb2RlbC50"
    "b21sUEsBAhQDFAAAAAgAAAAhAAiFTLeVAAAAuQAAAAgAAAAAAAAAAAAAAKSBsQAAAG1vZGVsLnB5UEsFBgAAAOMM1xLIXyJ7JNPA"
    "ZldJO7EvhFsFVYL1M63tCV8FUw6OTE1jSOjEDJ2FoW/sOjjieDY/+6e9hb5p1BdQSwECFAMUAAAACAAAACEA5+kt3X8AAACfAAAA"
    "FAAAAAAHAAAAAAAApIEAAABlAGFsY25yb29tLW1vZGVsLnRvbWxQSwECFAMUAAAACAAAACEACIVMt5UAAAC5AAAACAAAAAAAAAAA"
    "AAAApIGxAAAAbW9kZWwucHlQSwUGAAAAAAIAAgB4AAAAbAEAAAAA"
)


def test_a_zip_entry_whose_name_is_empty_is_refused_as_a_bad_path() -> None:
    with pytest.raises(IntakeRejected) as caught:
        load_package(EMPTY_ENTRY_NAME, IntakeLimits())
    assert caught.value.findings[0].code is Reason.ARCHIVE_PATH
