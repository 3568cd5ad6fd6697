"""Phase A hygiene, attacked for real: a package reads everything that could name the host and
encodes it into its initial weights; the stored artifact must name no host path.

tests/model_packages/layout_probe collects the environment, the working directory, HOME,
sys.path, sys.executable, the prefixes, /proc/self/{mountinfo,mounts,cmdline,environ}, the venv's
pyvenv.cfg, .pth and direct_url.json files, and listings of /, /opt, /tmp, HOME and the working
directory, and writes the text into its first layer's weight. It goes through the real intake
(ModelIntake: package checks, phase A in the sandbox, the artifact read back and validated) on every
local backend of the registry, as the shared sandbox suites do; the test decodes the stored
weights and looks for the host's paths: the venv, the base interpreter, the repository, the state
directory, the test's temporary directories and the sandboxes' own scratch directories.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cleanroom.models.intake import IntakeLimits
from cleanroom.models.intake.artifact import read_artifact
from cleanroom.models.intake.pack import pack_package
from cleanroom.models.intake.service import ModelIntake
from cleanroom.sandbox import backends, layout
from tests import tools
from tests.paths import MODEL_PACKAGES, REPO_ROOT

BACKENDS = {b.name: b.local for b in backends.BACKENDS if b.local is not None}
BASE = IntakeLimits()
LIMITS = replace(BASE, sandbox=replace(BASE.sandbox, wall_seconds=150.0, cpu_seconds=150))
NEUTRAL_ROOT = {"bin", "dev", "etc", "in", "lib", "lib64", "opt", "out", "proc", "sbin", "sys", "tmp", "usr"}
pytestmark = [pytest.mark.timeout(400), pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")]


@dataclass
class Probe:
    seen: dict[str, object]
    text: str
    host_paths: list[str]


def host_paths(state_dir: Path, tmp_root: Path) -> list[str]:
    """Every spelling of a host location the sandbox must not reveal."""
    paths = {sys.prefix, str(Path(sys.prefix).resolve()), str(Path(sys.base_prefix).resolve()), str(REPO_ROOT),
             str(state_dir), str(tmp_root)}
    if len(Path.home().parts) > 1:
        paths.add(str(Path.home()))
    if tempfile.gettempdir() != "/tmp":  # the sandbox has a /tmp of its own: the bare name tells nothing
        paths.add(tempfile.gettempdir())
    # The backends' per-run scratch directories (bundle, generated /etc, /out, the venv skeleton).
    return sorted(paths | {"cleanroom-bwrap-", "cleanroom-runsc-"})


def decode(weight: list[float]) -> str:
    length = int(weight[0])
    assert 0 < length < len(weight) - 1, "the probe's text was cut: raise its capacity"
    return bytes(int(v) for v in weight[1:length + 1]).decode("utf-8")


def run_probe(name: str, root: Path, basetemp: Path) -> Probe:
    state = root / "state"
    (state / "keys").mkdir(parents=True)
    launcher = BACKENDS[name](backends.Placement(deny=(state,)))
    package = root / "layout_probe"
    shutil.copytree(MODEL_PACKAGES / "layout_probe", package)
    archive = root / "layout_probe.zip"
    archive.write_bytes(pack_package(package))
    outcome = ModelIntake(limits=LIMITS, deny=[state], launcher=launcher, launcher_reason="test").run(archive, root / "work")
    report = outcome.report
    assert outcome.accepted and outcome.artifact_path is not None, report.summary_line() + report.manufacturer_traceback
    assert report.sandbox is not None and report.sandbox.backend == name
    program = read_artifact(outcome.artifact_path, max_bytes=1 << 30, max_header_bytes=1 << 24, max_tensors=4096, max_nodes=5000)
    text = decode(program.state_dict["0.weight"].flatten().tolist())
    return Probe(json.loads(text), text, host_paths(state, basetemp))


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Probe]:
    """Every backend's intake at once (gVisor's torch import dominates; the runs overlap)."""
    for name in BACKENDS:
        ok, why = BACKENDS[name](backends.Placement()).available()
        if not ok:
            tools.missing(name, f"does not work here: {why}")
    basetemp = tmp_path_factory.getbasetemp()
    with ThreadPoolExecutor(len(BACKENDS)) as pool:
        runs = {name: pool.submit(run_probe, name, tmp_path_factory.mktemp(f"neutral-{name}"), basetemp) for name in BACKENDS}
        return {name: run.result() for name, run in runs.items()}


@pytest.fixture(params=sorted(BACKENDS))
def probe(request: pytest.FixtureRequest, probes: dict[str, Probe]) -> Probe:
    return probes[request.param]


def test_phase_a_sees_no_host_path(probe: Probe) -> None:
    leaked = {path: [key for key, value in probe.seen.items() if path in json.dumps(value)]
              for path in probe.host_paths if path in probe.text}
    assert not leaked, f"host paths visible to phase A (path: where): {leaked}"


def test_phase_a_sees_the_neutral_layout(probe: Probe) -> None:
    seen = probe.seen
    assert seen["sys.prefix"] == layout.NEUTRAL_VENV and seen["sys.executable"] == layout.python()
    assert seen["cwd"] == "/out" and seen["home"] == "/tmp"
    environ = seen["environ"]
    assert isinstance(environ, dict) and environ["PATH"].startswith(f"{layout.NEUTRAL_VENV}/bin:")
    listings = seen["listings"]
    assert isinstance(listings, dict) and set(listings["/"]) <= NEUTRAL_ROOT, listings["/"]
    assert listings["/opt/cleanroom"] == sorted(["python", "venv", "src"][: 3 if layout.outside_code_dirs() else 2])
    # The editable install's .pth now names the neutral source root, and the venv still imports the service.
    assert any(layout.NEUTRAL_SRC in text for text in seen["pth files"].values()) == bool(layout.outside_code_dirs())
    assert seen["torch"].startswith(f"{layout.NEUTRAL_VENV}/lib/")

