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


# A central directory entry claiming it was made by zip version 23.5: zipfile.ZipFile() raised
# NotImplementedError, which read_package_zip did not expect (INTERNAL). The fuzzer's input (240 bytes).
UNSUPPORTED_ZIP_VERSION = base64.b64decode(
    "UEsDBBTaWgYU0GCPDQMAUEsBAhQDFAAAAAgAg2aHXdfj7zaTAAAAxQAAABgAAAAAAAAAAAAAAIABAABrLwBnAHBjbGVhbnJvb20t"
    "bW9kZUwudG9tbFBLAQIU/ev////X/3lmh10IhUy3lQAAALkAAAAMAAAAAAAAAAAAAACAAckAAABwa2cvbW9jZWwucHlQSwECFAMU"
    "AAAACACDZoddU/b5UU8AAACcAAAAHQAAAAAAAAAAAAAAgAGIAQAAcGtnL3dlaWdodHMvbW9kZWwuc2FmZXRlbnNvcnNQSwUGAAAA"
    "AAMAAwDLAAAAEgIAAAAA"
)


@pytest.mark.parametrize("data, reason", [(EMPTY_ENTRY_NAME, Reason.ARCHIVE_PATH), (UNSUPPORTED_ZIP_VERSION, Reason.ARCHIVE_INVALID)],
                         ids=["empty-entry-name", "unsupported-zip-version"])
def test_a_zip_the_fuzzer_crashed_intake_with_is_refused_with_a_reason(data: bytes, reason: Reason) -> None:
    with pytest.raises(IntakeRejected) as caught:
        load_package(data, IntakeLimits())
    assert caught.value.findings[0].code is reason
