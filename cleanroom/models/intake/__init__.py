"""Model intake: package checks, phase A (the manufacturer's Python in a sandbox, no data) and
export validation outside it.

Light on import (no torch): the SDK uses `pack_package` and `parse_manifest`; the service imports
`cleanroom.models.intake.service.ModelIntake`.
"""

from cleanroom.models.intake.limits import IntakeLimits
from cleanroom.models.intake.manifest import MANIFEST_NAME, Manifest, ManifestError, Task, parse_manifest
from cleanroom.models.intake.pack import PackError, pack_package
from cleanroom.models.intake.reasons import Finding, IntakeRejected, Reason

__all__ = [
    "MANIFEST_NAME",
    "Finding",
    "IntakeLimits",
    "IntakeRejected",
    "Manifest",
    "ManifestError",
    "PackError",
    "Reason",
    "Task",
    "pack_package",
    "parse_manifest",
]
