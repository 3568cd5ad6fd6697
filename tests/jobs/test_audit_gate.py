"""The privacy-audit release gate on a real server: an officer requires the one-run audit, a job
whose trainer has its noise turned off (tests/faults/noiseless.py, run in the real sandbox) fails
PRIVACY_AUDIT_FAILED with nothing released and its reservation spent. And the fault is
unreachable from the product: nothing under cleanroom/ names it, phase B never sets the trainer's
noise source, and no config field, flag or environment variable phase B sees can change it."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess

import grpc
import pytest

from cleanroom.cli import samples
from cleanroom.domain import privacy_audit as pa
from cleanroom.domain.identity import Role
from cleanroom.domain.privacy import Privacy
from cleanroom.domain.privacy_audit import canary_count
from cleanroom.jobs import release
from cleanroom.sandbox.base import SandboxRequest
from cleanroom.sandbox.layout import sandbox_env
from cleanroom.sdk import CleanroomClientError
from cleanroom.sdk.schema import Schema
from cleanroom.server.config import ServerConfig
from cleanroom.storage import job_repo, privacy_repo
from cleanroom.v1 import jobs_pb2
from tests.conftest import make_config, start_server
from tests.faults.launcher import NoiselessWorker
from tests.jobs.study import FEATURES
from tests.paths import MODEL_PACKAGES, REPO_ROOT
from tests.processes import cli_argv
from tests.tools import needs

CLEANROOM = REPO_ROOT / "cleanroom"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The breast-cancer data on a real server, its policy requiring the audit (no example model: the
    test submits the MLP it trains)."""
    base = tmp_path_factory.mktemp("audit-gate")
    running = start_server(make_config(base / "state", work_dir=base / "work"))
    clients = [running.client(running.principal(role)[1]) for role in (Role.DATA_OWNER, Role.PRIVACY_OFFICER)]
    maker_id, maker_token = running.principal(Role.MANUFACTURER)
    owner, officer = clients
    maker = running.client(maker_token)
    try:
        dataset = owner.upload_dataset(samples.write_breast_cancer_csv(base / "bc.csv"), Schema(samples.breast_cancer_schema(), 5))
        officer.set_budget(dataset.name, epsilon=6, delta=1e-4, reason="total")
        officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=5, delta=1e-4, reason="pilot")
        policy = officer.set_approval_policy(dataset.name, max_epsilon=3, auto_approve_epsilon=1.5,
                                             require_privacy_audit=True, reason="audit before any release")
        assert policy.require_privacy_audit and officer.get_budgets(dataset.name).policy.require_privacy_audit
        yield {"running": running, "maker": maker, "dataset": dataset.name, "patients": dataset.patient_count}
    finally:
        for client in (owner, officer, maker):
            client.close()
        running.server.stop(grace=0)


@needs("bwrap")
def test_a_noiseless_trainer_fails_the_gate_and_releases_nothing(world) -> None:
    """MLP (1058 parameters: 1024 canaries, one coordinate each), ε = 0.5, noise off inside the real
    sandbox. Measured lower bounds of such runs: well above 0.5 (see proof/audit.py's table)."""
    app, maker = world["running"].app, world["maker"]
    mlp = maker.submit_model(MODEL_PACKAGES / "mlp")
    spec = jobs_pb2.TrainingSpec(model=mlp.name, dataset=world["dataset"], feature_columns=FEATURES, label_column="malignant",
                                 target_epsilon=0.5, target_delta=1e-5, epochs=4, expected_batch_patients=32,
                                 learning_rate=0.1, optimizer="sgd", clipping_norm=1.0, validation_fraction=0.2)
    runner = app.runner
    healthy = runner._launcher
    runner._launcher = NoiselessWorker(healthy)  # the test's own Python hands the broken worker in
    try:
        done = maker.wait_job(maker.train(spec).name, timeout=300)
    finally:
        runner._launcher = healthy
    assert done.state == jobs_pb2.JOB_STATE_FAILED
    assert done.failure == jobs_pb2.JOB_FAILURE_PRIVACY_AUDIT_FAILED, jobs_pb2.JobFailure.Name(done.failure)
    assert not done.artifacts
    with pytest.raises(CleanroomClientError) as err:
        maker.download(done.name, "weights.safetensors")
    assert err.value.code is grpc.StatusCode.NOT_FOUND
    job_id = done.name.removeprefix("jobs/")
    with app.db.read() as session:
        spend = privacy_repo.get_spend(session, job_repo.get_job(session, job_id).spend_id)
        _, wrapped = job_repo.artifacts(session, job_id)
        events = [e.kind.value for e in privacy_repo.events(session) if e.spend_id == spend.id]
    assert wrapped is None  # nothing sealed for the requester
    assert spend.state.value == "committed" and spend.decrypted and events == ["reserve", "commit"]  # spent, as any failure
    assert canary_count(1058) == 1024


def test_the_estimate_states_the_audits_cost(world) -> None:
    maker = world["maker"]
    estimate = maker.estimate_cost(world["dataset"], epsilon=0.5, delta=1e-5)
    (note,) = estimate.notes
    assert "one-run privacy audit" in note and "Time:" in note and "Utility:" in note and f"the dataset's {world['patients']}" in note


def _checked(audit: dict[str, object] | None, epsilon: float = 1.0) -> release.Checked:
    params = {"noise_multiplier": 1.1, **({"privacy_audit": audit} if audit is not None else {})}
    return release.Checked({}, Privacy.cost(epsilon, 1e-5), "prv", params)


def test_the_gate_recomputes_the_bound_from_the_counts() -> None:
    pairs = pa.declared_pairs(1024)
    honest = pa.AuditResult(1024, tuple(pairs), (33, 66, 130, 262, 520), 1.0, 1e-5).to_json()
    passed = release.check_audit(_checked({**honest, "epsilon_lower_bound": 99.0}), canaries=1024)
    assert passed.dp_parameters["privacy_audit"]["epsilon_lower_bound"] == 0.0  # recomputed, not the worker's word
    assert passed.dp_parameters["privacy_audit"]["claimed_epsilon"] == 1.0
    assert release.check_audit(_checked(None), canaries=0).dp_parameters == _checked(None).dp_parameters  # not asked
    leaky = pa.AuditResult(1024, tuple(pairs), (64, 128, 256, 500, 900), 1.0, 1e-5).to_json()
    with pytest.raises(release.AuditFailed) as failed:
        release.check_audit(_checked({**leaky, "epsilon_lower_bound": 0.0}), canaries=1024)
    assert failed.value.audit.epsilon_lower_bound > 1.0
    assert release.check_audit(_checked(leaky, epsilon=8.0), canaries=1024)  # the same counts prove nothing against ε = 8
    for broken in (None, {**honest, "correct_per_pair": [1]}, {**honest, "declared_pairs": [[1, 1]] * 5}, "nonsense"):
        with pytest.raises(release.ReleaseRefused):
            release.check_audit(_checked(broken), canaries=1024)  # asked, but missing or malformed
    with pytest.raises(release.ReleaseRefused):
        release.check_audit(_checked(honest), canaries=512)  # not the canaries asked


def _calls(tree: ast.AST, names: set[str]) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and (getattr(node.func, "id", None) in names or getattr(node.func, "attr", None) in names)]


def test_nothing_in_the_service_names_the_fault() -> None:
    for path in CLEANROOM.rglob("*.py"):
        text = path.read_text()
        assert not [w for w in ("tests.faults", "tests/faults", "noiseless", "noiselessworker") if w in text.lower()], path


def test_phase_b_never_chooses_the_noise_or_its_randomness() -> None:
    """The trainer's noise_source and seed_source are test arguments: phase B's calls never pass them,
    so the noise is always noise.SecureGaussian from the OS CSPRNG."""
    worker = CLEANROOM / "worker"
    calls = [call for path in worker.rglob("*.py") for call in _calls(ast.parse(path.read_text()), {"train", "train_source"})]
    assert len(calls) == 2
    for call in calls:
        keywords = {k.arg for k in call.keywords}
        assert None not in keywords and not keywords & {"noise_source", "seed_source"}, keywords


def test_phase_b_reads_no_environment_and_sees_a_fixed_one() -> None:
    for folder in ("worker", "trainer"):
        for path in (CLEANROOM / folder).rglob("*.py"):
            names = {getattr(n, "attr", None) or getattr(n, "id", None) for n in ast.walk(ast.parse(path.read_text()))}
            assert not names & {"environ", "getenv", "environb", "putenv"}, path
    runner = ast.parse((CLEANROOM / "jobs" / "runner.py").read_text())
    (request,) = _calls(runner, {"SandboxRequest"})
    env = next(k.value for k in request.keywords if k.arg == "env")
    assert isinstance(env, ast.Dict) and [ast.literal_eval(k) for k in env.keys if k is not None] == ["CLEANROOM_REQUEST_ID"]
    base = sandbox_env(SandboxRequest(argv=("python3",)))  # the layout's fixed variables (PATH, HOME, ...)
    seen = sandbox_env(SandboxRequest(argv=("python3",), env={"CLEANROOM_REQUEST_ID": "jobs/x"}))
    assert set(seen) == {*base, "CLEANROOM_REQUEST_ID"} and not [k for k in seen if "NOISE" in k or "FAULT" in k]


def test_no_server_setting_or_flag_turns_the_noise_off() -> None:
    """Every field of the server's config, and every flag and environment variable `serve --help` lists."""
    words = re.compile(r"(\b|_)(noise|noiseless|faults?|sigma|privacy_audit|audit)(\b|_)", re.IGNORECASE)
    assert not [f.name for f in dataclasses.fields(ServerConfig) if words.search(f.name)]
    helptext = subprocess.run(cli_argv("serve", "--help"), capture_output=True, text=True, check=True, timeout=120).stdout
    assert "CLEANROOM_SANDBOX" in helptext and not words.findall(helptext)
