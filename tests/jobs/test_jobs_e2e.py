"""DP jobs end to end over gRPC: evaluate, train, download, verify; budgets, bad input, cancel, restart."""

from __future__ import annotations

import json
import time

import grpc
import psutil
import pytest
from safetensors.torch import load

import enclave_sim
from cleanroom.cli import main as cli
from cleanroom.cli import samples
from cleanroom.domain.identity import Role
from cleanroom.domain.jobs import JobState
from cleanroom.sdk import CleanroomClientError
from cleanroom.sdk.schema import Schema
from cleanroom.sdk.verify import verify_job
from cleanroom.statistics.engine import Filter, Query
from cleanroom.storage import job_repo, privacy_repo
from cleanroom.v1 import jobs_pb2, models_pb2
from tests.jobs.study import EXAMPLE, FEATURES, breast_cancer_study
from tests.paths import MODEL_PACKAGES
from tests.processes import alive
from tests.tools import needs

pytestmark = needs("bwrap")  # the server's sandboxes (tests/tools.py)

MODELS = MODEL_PACKAGES
MLP = MODELS / "mlp"  # a two-layer MLP over the same 30 features (the example package is a logistic regression)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with breast_cancer_study(tmp_path_factory.mktemp("jobs")) as study:
        yield study


def _evaluation(world, epsilon: float = 0.5, **changes) -> jobs_pb2.EvaluationSpec:
    spec = jobs_pb2.EvaluationSpec(model=world["model"], dataset=world["dataset"], feature_columns=FEATURES,
                                   label_column="malignant", target_epsilon=epsilon, target_delta=1e-5)
    for key, value in changes.items():
        setattr(spec, key, value) if not isinstance(value, list) else (spec.ClearField(key), getattr(spec, key).extend(value))
    return spec


def _training(world, epsilon: float = 1.0, **changes) -> jobs_pb2.TrainingSpec:
    spec = jobs_pb2.TrainingSpec(model=world["model"], dataset=world["dataset"], feature_columns=FEATURES, label_column="malignant",
                                 target_epsilon=epsilon, target_delta=1e-5, epochs=4, expected_batch_patients=64,
                                 learning_rate=0.1, optimizer="sgd", clipping_norm=1.0, validation_fraction=0.2)
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def _verify(world, job, files, spec, package=EXAMPLE):
    app = world["running"].app
    return verify_job(job, files, package_directory=package, pinned_root_pem=app.enclave.root.public_key_pem(),
                      allowed_measurements=[app.enclave.measurement], spec=spec)


def _reservations(world) -> int:
    with world["running"].app.db.read() as session:
        return sum(1 for e in privacy_repo.events(session) if e.kind.value == "reserve")


def test_evaluation_of_pretrained_weights_is_released_with_a_verifiable_receipt(world) -> None:
    maker, spec = world["maker"], _evaluation(world)
    job = maker.evaluate(spec)
    assert job.state == jobs_pb2.JOB_STATE_QUEUED  # within the auto-approve threshold
    states = [j.state for j in maker.watch_job(job.name, timeout=300)]
    assert states[-1] == jobs_pb2.JOB_STATE_RELEASED and jobs_pb2.JOB_STATE_RUNNING in states
    done = maker.get_job(job.name)
    files = maker.download_all(done)
    assert set(files) == {"metrics.json", "report.html", "receipt.json"}
    verified = _verify(world, done, files, spec)
    assert float(verified.report.epsilon_spent) <= 0.5 + 1e-9 and verified.report.accountant == "zcdp-rdp"
    assert b"<svg" in files["report.html"] and b"auroc" in files["metrics.json"]
    with pytest.raises(enclave_sim.VerificationError):
        _verify(world, done, {**files, "metrics.json": files["metrics.json"].replace(b"auroc", b"AUROC")}, spec)


def test_training_releases_exactly_the_trainable_tensors(world) -> None:
    """A multi-layer model (the fixture MLP: two linear layers around a ReLU), so that "every trainable
    tensor, nothing else" is more than one layer; the expected set is the one intake resolved."""
    maker = world["maker"]
    mlp = maker.submit_model(MLP)
    assert mlp.state == models_pb2.MODEL_STATE_ACCEPTED, mlp.intake_report.findings
    trainable = set(mlp.intake_report.trainable_parameters)
    assert trainable == {"0.weight", "0.bias", "2.weight", "2.bias"}
    spec = _training(world, model=mlp.name)
    job = maker.train(spec)
    assert job.training.recipe == ""  # every recipe field was set: it runs exactly as sent
    done = maker.wait_job(job.name, timeout=300)
    assert done.state == jobs_pb2.JOB_STATE_RELEASED, jobs_pb2.JobFailure.Name(done.failure)
    files = maker.download_all(done)
    weights = load(files["weights.safetensors"])
    assert set(weights) == trainable
    assert {name: tuple(t.shape) for name, t in weights.items()} == {"0.weight": (32, 30), "0.bias": (32,), "2.weight": (2, 32), "2.bias": (2,)}
    assert all(bool(t.isfinite().all()) for t in weights.values())
    verified = _verify(world, done, files, spec, package=MLP)
    assert verified.report.accountant in ("prv", "rdp") and verified.epsilon_recomputed <= 1.0 + 1e-6
    assert "recipe" not in verified.report.dp_parameters  # the receipt of a fully named request is what it always was
    with pytest.raises(enclave_sim.VerificationError):
        _verify(world, done, files, _training(world, model=mlp.name, learning_rate=0.2), package=MLP)  # not the request that was sent
    messages = [str(j) for j in maker.watch_job(done.name)]
    assert all("loss" not in m and "accuracy" not in m for m in messages)  # coarse states only


@pytest.mark.parametrize("change, field", [
    ({"feature_columns": FEATURES[:-1] + ["nope"]}, "spec.feature_columns[nope]"),
    ({"feature_columns": FEATURES[:-1] + ["postcode"]}, "spec.feature_columns[postcode]"),
    ({"feature_columns": FEATURES[:-1]}, "spec.feature_columns"),
    ({"optimizer": "lbfgs"}, "spec.optimizer"),
    ({"label_column": "visit_date"}, "spec.label_column"),
    ({"target_delta": 1.0}, "spec.target_delta"),
    ({"target_epsilon": -1.0}, "spec.target_epsilon"),
])
def test_bad_requests_are_refused_before_any_reservation(world, change, field) -> None:
    before = _reservations(world)
    spec = _training(world)
    for key, value in change.items():
        if isinstance(value, list):
            spec.ClearField(key)
            getattr(spec, key).extend(value)
        else:
            setattr(spec, key, value)
    with pytest.raises(CleanroomClientError) as err:
        world["maker"].train(spec)
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in err.value.violations]
    assert _reservations(world) == before


# "age" is declared INTEGER but is a quasi-identifier generalised to age bands: stored as text.
AGE_AS_TEXT = "age is a quasi-identifier stored as age-band labels (age band of 10 years, 80+), not as numbers"


def _refused(call, *args) -> list[tuple[str, str]]:
    with pytest.raises(CleanroomClientError) as err:
        call(*args)
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    return [(v.field, v.description) for v in err.value.violations]


def test_a_generalised_quasi_identifier_as_numeric_input_is_refused_before_any_reservation(world) -> None:
    maker, dataset = world["maker"], world["dataset"]
    ledger = list(world["officer"].ledger(dataset=dataset))
    reservations = _reservations(world)
    for submit, spec in ((maker.train, _training(world)), (maker.evaluate, _evaluation(world))):
        spec.ClearField("feature_columns")
        spec.feature_columns.extend([*FEATURES[:-1], "age"])
        assert ("spec.feature_columns[age]", f"{AGE_AS_TEXT}: it cannot be a numeric feature") in _refused(submit, spec)
    queries = [
        (Query(kind="mean", column="age", bounds=(0.0, 120.0), epsilon=0.1),
         ("column", f"{AGE_AS_TEXT}: a mean needs a numeric (integer or float) column")),
        (Query(kind="histogram", column="age", bins=(0, 50, 120), epsilon=0.1, delta=1e-6),
         ("bins", f"{AGE_AS_TEXT}: only a histogram over a numeric column takes bins")),
        (Query(kind="count", filters=(Filter("age", ">=", 60),), epsilon=0.1),
         ("filters[0].op", f"{AGE_AS_TEXT}: a string column takes only ==, != or in")),
    ]
    for query, violation in queries:
        assert violation in _refused(maker.run_query, dataset, query)
        assert violation in _refused(maker.estimate_query, dataset, query)
    assert list(world["officer"].ledger(dataset=dataset)) == ledger and _reservations(world) == reservations


def test_unshared_dataset_and_unknown_model_are_not_found(world) -> None:
    running = world["running"]
    _, token = running.principal(Role.MANUFACTURER)
    with running.client(token) as stranger:
        with pytest.raises(CleanroomClientError) as err:
            stranger.train(_training(world))
        assert err.value.code is grpc.StatusCode.NOT_FOUND


def test_pending_job_runs_after_approval_and_cancel_withdraws(world) -> None:
    maker, officer = world["maker"], world["officer"]
    waiting = maker.evaluate(_evaluation(world, epsilon=2.0))
    assert waiting.state == jobs_pb2.JOB_STATE_PENDING_APPROVAL
    withdrawn = maker.evaluate(_evaluation(world, epsilon=2.0))
    assert maker.cancel_job(withdrawn.name).state == jobs_pb2.JOB_STATE_CANCELLED
    pending = [p.name for p in officer.pending_requests()]
    assert waiting.privacy_request in pending and withdrawn.privacy_request not in pending
    officer.approve(waiting.privacy_request, "validation for the regulator")
    assert maker.wait_job(waiting.name, timeout=300).state == jobs_pb2.JOB_STATE_RELEASED


def test_restart_in_the_middle_of_a_job(world) -> None:
    app = world["running"].app
    app.runner.stop()
    try:
        job = world["maker"].evaluate(_evaluation(world, epsilon=0.1))
        claimed = app.runner.claim_next()
        assert claimed is not None and claimed.id == job.name.removeprefix("jobs/")
        app.ledger.mark_decrypted(claimed.spend_id)  # the server died after the key left the broker
        keep = app.runner.recover()
        with app.db.read() as session:
            after = job_repo.get_job(session, claimed.id)
            spend = privacy_repo.get_spend(session, claimed.spend_id)
        assert after.state is JobState.FAILED and after.failure.value == "server_restarted"
        assert spend.state.value == "committed" and claimed.spend_id not in keep
    finally:
        app.runner.start()


def _sandbox_processes(before: set[int]) -> set[int]:
    """This process's descendants started since `before` (the in-process server's sandboxes)."""
    return {p.pid for p in psutil.Process().children(recursive=True)} - before


def _is_worker(pid: int) -> bool:
    try:
        return "cleanroom.worker" in " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return False


def test_cancelling_a_running_training_job_kills_its_sandbox_at_once(world) -> None:
    maker, app = world["maker"], world["running"].app
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    # About a minute of training (57 steps an epoch): without a kill, cancelling would wait for all of it.
    job = maker.train(_training(world, epsilon=0.3, epochs=1000, expected_batch_patients=8))
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while not any(_is_worker(pid) for pid in seen):
        assert time.monotonic() < deadline, "the worker sandbox never started"
        assert maker.get_job(job.name).state in (jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING)
        seen |= _sandbox_processes(before)
        time.sleep(0.05)
    time.sleep(1.0)  # the worker is decrypting and training now
    seen |= _sandbox_processes(before)
    assert maker.get_job(job.name).state == jobs_pb2.JOB_STATE_RUNNING

    started = time.monotonic()
    maker.cancel_job(job.name)
    done = maker.wait_job(job.name, timeout=60)
    took = time.monotonic() - started
    assert done.state == jobs_pb2.JOB_STATE_CANCELLED and took < 5, (jobs_pb2.JobState.Name(done.state), took)
    for artefact in ("weights.safetensors", "receipt.json", "metrics.json"):
        with pytest.raises(CleanroomClientError) as err:
            maker.download(job.name, artefact)
        assert err.value.code is grpc.StatusCode.NOT_FOUND
    settle = time.monotonic() + 5
    while alive(seen) and time.monotonic() < settle:
        time.sleep(0.05)
    assert not alive(seen), alive(seen)
    job_id = job.name.removeprefix("jobs/")
    with app.db.read() as session:
        stored = job_repo.get_job(session, job_id)
        spend = privacy_repo.get_spend(session, stored.spend_id)
        _, wrapped = job_repo.artifacts(session, job_id)
        events = [e for e in privacy_repo.events(session) if e.spend_id == stored.spend_id]
    assert wrapped is None  # nothing was sealed for the requester
    # The key left the broker before the cancel: the whole reservation is spent, once.
    assert spend.state.value == "committed" and spend.decrypted
    assert [e.kind.value for e in events] == ["reserve", "commit"]
    assert events[1].amount == spend.reserved


def test_a_model_version_that_failed_intake_cannot_run_a_job(world) -> None:
    rejected = world["maker"].submit_model(MODELS / "batch_norm")
    assert rejected.state == models_pb2.MODEL_STATE_REJECTED
    before = _reservations(world)
    with pytest.raises(CleanroomClientError) as err:
        world["maker"].evaluate(_evaluation(world, model=rejected.name))
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert [v.field for v in err.value.violations] == ["spec.model"] and _reservations(world) == before


def test_the_cli_evaluates_watches_downloads_and_verifies(world, tmp_path, capsys) -> None:
    """Also the trust root's round trip: `trust show --pem` pins the root that a job receipt and a
    statistics receipt then both verify against, from the CLI alone."""
    connection = ["--server", world["running"].address, "--token", world["maker_token"]]
    root = tmp_path / "root.pem"
    assert cli.main([*connection, "trust", "show", "--pem"]) == 0
    root.write_text(capsys.readouterr().out)
    base = [*connection, "job"]
    assert cli.main([*base, "evaluate", "--model", world["model"], "--dataset", world["dataset"], "--features", ",".join(FEATURES),
                     "--label", "malignant", "--epsilon", "0.2", "--wait"]) == 0
    out = capsys.readouterr().out
    name = out.split(":", 1)[0]
    assert name.startswith("jobs/") and out.rstrip().endswith("released")
    assert cli.main([*base, "download", name, "--to", str(tmp_path / "files"), "--package", str(EXAMPLE), "--root-pem", str(root)]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["verified"] and sorted(verified["files"]) == sorted(p.name for p in (tmp_path / "files").iterdir())
    other = tmp_path / "other.pem"  # a root the receipt was not signed under
    other.write_bytes(enclave_sim.RootAuthority.load_or_create(tmp_path / "other-root").public_key_pem())
    assert cli.main([*base, "download", name, "--to", str(tmp_path / "refused"), "--package", str(EXAMPLE), "--root-pem", str(other)]) == 6
    assert "did NOT verify" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    answer = tmp_path / "answer.json"
    assert cli.main([*connection, "stats", "count", world["dataset"], "--epsilon", "0.1", "--root-pem", str(root), "--save", str(answer)]) == 0
    assert "receipt verified" in capsys.readouterr().out
    assert cli.main([*connection, "stats", "verify", str(answer), "--root-pem", str(root)]) == 0
    assert "receipt verified" in capsys.readouterr().out
    answer.write_text(answer.read_text().replace('"epsilon": 0.1', '"epsilon": 0.01'))  # a tampered answer
    assert cli.main([*connection, "stats", "verify", str(answer), "--root-pem", str(root)]) == 6
    assert "did NOT verify: EPSILON_MISMATCH" in capsys.readouterr().err


def test_budget_exhaustion_is_refused_with_the_reason(world) -> None:
    with pytest.raises(CleanroomClientError) as err:
        for _ in range(8):  # auto-approved spends of 1.5 until the share's cap of 5 is used up
            world["maker"].evaluate(_evaluation(world, epsilon=1.5))
    assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED and err.value.reason == "PRIVACY_BUDGET_EXHAUSTED"
    # The share (cap 5) is always shorter than the dataset-wide cap (6): it is named, in words, with the way through.
    assert "the manufacturer's share budget" in err.value.message and "this request needs ε 1.5" in err.value.message
    assert any("raise that cap to at least" in v.description for v in err.value.violations)


@pytest.mark.parametrize("classes, message", [
    (3, "the dataset declares 3 classes for this label; the model has 2"),
    (0, "the dataset does not declare this label's classes; the data owner must declare label_classes at upload"),
])
def test_label_classes_must_match_the_model_before_any_reservation(world, tmp_path, classes, message) -> None:
    running, officer = world["running"], world["officer"]
    _, owner_token = running.principal(Role.DATA_OWNER)
    columns = samples.breast_cancer_schema()
    columns[-1].label_classes = classes  # the "malignant" label (0/1 values: 3 classes still fits them)
    with running.client(owner_token) as owner:
        dataset = owner.upload_dataset(samples.write_breast_cancer_csv(tmp_path / "bc.csv"), Schema(columns, 5)).name
    officer.set_budget(dataset, epsilon=6, delta=1e-4, reason="total")
    officer.share_dataset(dataset, world["maker"].whoami().name, epsilon=5, delta=1e-4, reason="pilot")
    officer.set_approval_policy(dataset, max_epsilon=3, auto_approve_epsilon=1.5, reason="routine")
    before = _reservations(world)
    for submit, spec in ((world["maker"].train, _training(world)), (world["maker"].evaluate, _evaluation(world))):
        spec.dataset = dataset
        with pytest.raises(CleanroomClientError) as err:
            submit(spec)
        assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert ("spec.label_column", message) in [(v.field, v.description) for v in err.value.violations]
    assert _reservations(world) == before
