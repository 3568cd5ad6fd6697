"""proof/audit.py's jobs through a real server: the breast-cancer table under a policy that requires
the one-run privacy audit, the fixture MLP, a healthy job (released; its verified receipt carries
the audit) and a job whose sandboxed worker has its noise turned off (tests/faults/noiseless.py,
handed to the runner from this process as the gate test does), which must fail at the gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cleanroom.cli import samples
from cleanroom.domain.identity import Role
from cleanroom.sdk.schema import Schema
from cleanroom.sdk.verify import verify_job
from cleanroom.v1 import jobs_pb2

MLP = Path(__file__).resolve().parents[1] / "tests" / "model_packages" / "mlp"


def _spec(model: str, dataset: str, epsilon: float) -> jobs_pb2.TrainingSpec:
    return jobs_pb2.TrainingSpec(model=model, dataset=dataset, feature_columns=samples.feature_names(), label_column="malignant",
                                 target_epsilon=epsilon, target_delta=1e-5, epochs=4, expected_batch_patients=32,
                                 learning_rate=0.1, optimizer="sgd", clipping_norm=1.0, validation_fraction=0.2)


def _healthy(running: Any, maker: Any, model: str, dataset: str) -> str:
    spec = _spec(model, dataset, 1.0)
    done = maker.wait_job(maker.train(spec).name, timeout=600)
    if done.state != jobs_pb2.JOB_STATE_RELEASED:
        return f"**FAILED**: the healthy job (ε = 1) ended {jobs_pb2.JobState.Name(done.state)} ({jobs_pb2.JobFailure.Name(done.failure)})"
    files = maker.download_all(done)
    app = running.app
    verified = verify_job(done, files, package_directory=MLP, pinned_root_pem=app.enclave.root.public_key_pem(),
                          allowed_measurements=[app.enclave.measurement], spec=spec)
    audit = verified.report.dp_parameters.get("privacy_audit")
    if not isinstance(audit, dict):
        return "**FAILED**: the healthy job was released without the audit in its receipt"
    return (f"healthy job, claimed ε = 1: released; its verified receipt records the audit: {audit['canaries']} canaries, "
            f"{audit['correct']} of {audit['guesses']} guesses right, ε lower bound {float(audit['epsilon_lower_bound']):.2f} "
            f"at {float(audit['confidence']):.0%} against the claimed {float(audit['claimed_epsilon']):.3f}")


def _broken(running: Any, maker: Any, model: str, dataset: str) -> str:
    from tests.faults.launcher import NoiselessWorker

    runner = running.app.runner
    healthy = runner._launcher
    runner._launcher = NoiselessWorker(healthy)
    try:
        done = maker.wait_job(maker.train(_spec(model, dataset, 0.5)).name, timeout=600)
    finally:
        runner._launcher = healthy
    outcome = f"{jobs_pb2.JobState.Name(done.state)}, {jobs_pb2.JobFailure.Name(done.failure)}"
    caught = done.state == jobs_pb2.JOB_STATE_FAILED and done.failure == jobs_pb2.JOB_FAILURE_PRIVACY_AUDIT_FAILED
    return (("" if caught and not done.artifacts else "**FAILED**: ")
            + f"noise off in the sandboxed worker, claimed ε = 0.5: {outcome}; {len(done.artifacts)} files downloadable")


def healthy_and_broken_jobs(work: Path) -> list[str]:
    from tests.conftest import make_config, start_server

    running = start_server(make_config(work / "state", work_dir=work / "work"))
    owner, officer = (running.client(running.principal(role)[1]) for role in (Role.DATA_OWNER, Role.PRIVACY_OFFICER))
    maker_id, maker_token = running.principal(Role.MANUFACTURER)
    maker = running.client(maker_token)
    try:
        dataset = owner.upload_dataset(samples.write_breast_cancer_csv(work / "bc.csv"), Schema(samples.breast_cancer_schema(), 5)).name
        officer.set_budget(dataset, epsilon=6, delta=1e-4, reason="proof")
        officer.share_dataset(dataset, f"principals/{maker_id}", epsilon=5, delta=1e-4, reason="proof")
        officer.set_approval_policy(dataset, max_epsilon=3, auto_approve_epsilon=1.5, require_privacy_audit=True, reason="proof")
        model = maker.submit_model(MLP).name
        return [_healthy(running, maker, model, dataset), _broken(running, maker, model, dataset)]
    finally:
        for client in (owner, officer, maker):
            client.close()
        running.server.stop(grace=0)
