"""The server the RPC fuzzer talks to, and one valid request per RPC for it to mutate.

`start_world` bootstraps a state directory, starts `cleanroom serve` (tests/processes.py), creates a
principal of every role, uploads the breast-cancer table (and a spare one, which DeleteDataset may
delete), shares it, leaves one privacy request pending, and with `model=True` also submits a real
model package (phase A runs once) and a training job that waits for approval, so the job RPCs get
real names. The approval policy auto-approves almost nothing, so a mutated request that is still
valid waits for an officer instead of starting a training run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import subprocess
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf.message import Message

from cleanroom.api.server import MAX_MESSAGE_BYTES
from cleanroom.cli import samples
from cleanroom.domain.identity import Role
from cleanroom.sdk import Client
from cleanroom.sdk.errors import CleanroomClientError
from cleanroom.sdk.schema import Schema
from cleanroom.v1 import common_pb2, datasets_pb2, identity_pb2, jobs_pb2, models_pb2, privacy_pb2, releases_pb2, stats_pb2
from proof.rpc_fuzz import ROOT, World
from tests.processes import cli_argv, serve

AUTO_APPROVE_EPSILON = 0.05   # a stats query under it runs at once; anything bigger waits
SPARE_ROWS = 120
AUTH_FAILURE_LIMIT = 1_000_000   # the most the server allows (see start_world)


def _id() -> str:
    return uuid.uuid4().hex


def _amount(epsilon: float, delta: float) -> privacy_pb2.PrivacyAmount:
    return privacy_pb2.PrivacyAmount(epsilon=epsilon, delta=delta)


def _query(w: World) -> stats_pb2.StatsQuery:
    return stats_pb2.StatsQuery(kind=stats_pb2.STATISTIC_KIND_MEAN, epsilon=AUTO_APPROVE_EPSILON / 2, column=w.names["feature"],
                                bounds=stats_pb2.Bounds(lower=0, upper=50))


def _training(w: World) -> jobs_pb2.TrainingSpec:
    return jobs_pb2.TrainingSpec(model=w.names["model"], dataset=w.names["dataset"], feature_columns=samples.feature_names(),
                                 label_column="malignant", target_epsilon=1.0, target_delta=1e-6, epochs=1)


def _evaluation(w: World) -> jobs_pb2.EvaluationSpec:
    return jobs_pb2.EvaluationSpec(model=w.names["model"], dataset=w.names["dataset"], feature_columns=samples.feature_names(),
                                   label_column="malignant", target_epsilon=1.0, target_delta=1e-6)


# One valid request per unary RPC ("Service/Method"); an RPC missing here is still fuzzed, with noise.
BASELINES: dict[str, Callable[[World], Message]] = {
    "AdminService/CreatePrincipal": lambda w: identity_pb2.CreatePrincipalRequest(
        request_id=_id(), display_name="fuzz principal", role=common_pb2.MANUFACTURER),
    "AdminService/ListPrincipals": lambda w: identity_pb2.ListPrincipalsRequest(page_size=10),
    "AdminService/CreateOrganisation": lambda w: identity_pb2.CreateOrganisationRequest(
        request_id=_id(), display_name="fuzz hospital", kind=identity_pb2.ORGANISATION_KIND_HOSPITAL),
    "AdminService/ListOrganisations": lambda w: identity_pb2.ListOrganisationsRequest(page_size=10),
    "AdminService/RotateKeys": lambda w: identity_pb2.RotateKeysRequest(request_id=_id()),
    "AdminService/CreateConsoleLogin": lambda w: identity_pb2.CreateConsoleLoginRequest(
        request_id=_id(), principal=w.names["maker"], username="fuzz.maker"),
    "IdentityService/WhoAmI": lambda w: identity_pb2.WhoAmIRequest(),
    "IdentityService/SignIn": lambda w: identity_pb2.SignInRequest(username="fuzz.maker", password="not the password, fuzz"),
    "IdentityService/SetConsolePassword": lambda w: identity_pb2.SetConsolePasswordRequest(new_password="a fuzzing password"),
    "DatasetService/GetDataset": lambda w: datasets_pb2.GetDatasetRequest(name=w.names["dataset"]),
    "DatasetService/ListDatasets": lambda w: datasets_pb2.ListDatasetsRequest(page_size=10),
    "DatasetService/DeleteDataset": lambda w: datasets_pb2.DeleteDatasetRequest(name=w.names["spare"], request_id=_id()),
    "PrivacyService/ShareDataset": lambda w: privacy_pb2.ShareDatasetRequest(
        request_id=_id(), dataset=w.names["dataset"], manufacturer=w.names["maker"], cap=_amount(5, 1e-4), reason="fuzz"),
    "PrivacyService/SetBudget": lambda w: privacy_pb2.SetBudgetRequest(
        request_id=_id(), dataset=w.names["dataset"], cap=_amount(10, 1e-4), reason="fuzz"),
    "PrivacyService/GetBudgets": lambda w: privacy_pb2.GetBudgetsRequest(dataset=w.names["dataset"]),
    "PrivacyService/SetApprovalPolicy": lambda w: privacy_pb2.SetApprovalPolicyRequest(request_id=_id(), reason="fuzz", policy=(
        privacy_pb2.ApprovalPolicy(dataset=w.names["dataset"], max_epsilon_per_request=5, auto_approve_epsilon=AUTO_APPROVE_EPSILON))),
    "PrivacyService/EstimateCost": lambda w: privacy_pb2.EstimateCostRequest(
        dataset=w.names["dataset"], manufacturer=w.names["maker"], cost=_amount(1, 1e-6)),
    "PrivacyService/ListLedger": lambda w: privacy_pb2.ListLedgerRequest(dataset=w.names["dataset"], page_size=10),
    "PrivacyService/ListPendingRequests": lambda w: privacy_pb2.ListPendingRequestsRequest(page_size=10),
    "PrivacyService/ApproveRequest": lambda w: privacy_pb2.DecideRequest(request_id=_id(), name=w.names["pending"], reason="fuzz"),
    "PrivacyService/RejectRequest": lambda w: privacy_pb2.DecideRequest(request_id=_id(), name=w.names["pending"], reason="fuzz"),
    # "active" on an active share changes nothing, so the other RPCs keep a usable share while fuzzing.
    "PrivacyService/SetShareState": lambda w: privacy_pb2.SetShareStateRequest(
        request_id=_id(), dataset=w.names["dataset"], manufacturer=w.names["maker"], state="active", reason="fuzz"),
    "AuditService/VerifyAuditLog": lambda w: privacy_pb2.VerifyAuditLogRequest(),
    "AuditService/ExportAuditLog": lambda w: privacy_pb2.ExportAuditLogRequest(after_seq=0),
    "AuditService/SignAuditExport": lambda w: privacy_pb2.SignAuditExportRequest(through_seq=0),
    "AttestationService/GetTrustBundle": lambda w: models_pb2.GetTrustBundleRequest(),
    "StatsService/RunQuery": lambda w: stats_pb2.RunQueryRequest(request_id=_id(), dataset=w.names["dataset"], query=_query(w)),
    "StatsService/EstimateQuery": lambda w: stats_pb2.EstimateQueryRequest(dataset=w.names["dataset"], query=_query(w)),
    "ModelService/GetModel": lambda w: models_pb2.GetModelRequest(name=w.names["model"]),
    "ModelService/ListModels": lambda w: models_pb2.ListModelsRequest(page_size=10),
    "JobService/SubmitTraining": lambda w: jobs_pb2.SubmitTrainingRequest(request_id=_id(), spec=_training(w)),
    "JobService/SubmitEvaluation": lambda w: jobs_pb2.SubmitEvaluationRequest(request_id=_id(), spec=_evaluation(w)),
    "JobService/GetJob": lambda w: jobs_pb2.GetJobRequest(name=w.names["job"]),
    "JobService/ListJobs": lambda w: jobs_pb2.ListJobsRequest(page_size=10),
    "JobService/WatchJob": lambda w: jobs_pb2.WatchJobRequest(name=w.names["job"]),
    "JobService/CancelJob": lambda w: jobs_pb2.CancelJobRequest(name=w.names["job"], request_id=_id()),
    "JobService/DownloadArtifact": lambda w: jobs_pb2.DownloadArtifactRequest(job=w.names["job"], artifact="receipt.json"),
    "ReleaseService/ListReleases": lambda w: releases_pb2.ListReleasesRequest(dataset=w.names["dataset"], page_size=10),
    "ReleaseService/GetRelease": lambda w: releases_pb2.GetReleaseRequest(name=w.names["release"]),
    "ReleaseService/DownloadReleaseArtifact": lambda w: releases_pb2.DownloadReleaseArtifactRequest(
        release=w.names["release"], artifact="answer.json"),
}


def stream_baselines(w: World) -> dict[str, list[Message]]:
    return {"DatasetService/UploadDataset": w.upload, "ModelService/SubmitModel": w.package}


def _streamed(message_type: type[Message], metadata: Message, data: bytes, trailer_type: type[Message]) -> list[Message]:
    trailer = trailer_type(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())  # type: ignore[call-arg]
    half = len(data) // 2
    return [message_type(metadata=metadata), message_type(chunk=data[:half]), message_type(chunk=data[half:]),  # type: ignore[call-arg]
            message_type(trailer=trailer)]  # type: ignore[call-arg]


def _small_csv(full: Path, rows: int) -> bytes:
    with full.open(newline="") as source:
        kept = [row for _, row in zip(range(rows + 1), csv.reader(source))]
    out = io.StringIO()
    csv.writer(out).writerows(kept)
    return out.getvalue().encode()


def _upload_stream(data: bytes) -> list[Message]:
    metadata = datasets_pb2.UploadMetadata(request_id=_id(), display_name="fuzz upload", format=datasets_pb2.CSV,
                                           columns=samples.breast_cancer_schema(), size_bytes=len(data))
    return _streamed(datasets_pb2.UploadDatasetRequest, metadata, data, datasets_pb2.UploadTrailer)


def _refused_package() -> list[Message]:
    """A well-formed package zip whose entrypoint module is absent: refused before phase A, so a
    mutation that keeps it valid never starts a sandbox."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cleanroom-model.toml", 'name = "fuzz"\nversion = "1.0.0"\nentrypoint = "absent:build_model"\n'
                                                 'task = "binary-classification"\nnum_classes = 2\ninput_shape = [30]\n')
        archive.writestr("model.py", (ROOT / "tests/model_packages/mlp/model.py").read_text())
    data = buffer.getvalue()
    metadata = models_pb2.SubmitModelMetadata(request_id=_id(), size_bytes=len(data))
    return _streamed(models_pb2.SubmitModelRequest, metadata, data, models_pb2.SubmitModelTrailer)


def start_world(tmp: Path, *, model: bool = False) -> World:
    """A running server with real inhabitants (see the module docstring); the caller closes it."""
    state, log = tmp / "state", tmp / "server.log"
    admin = subprocess.run(cli_argv("admin", "bootstrap", "--state-dir", str(state)), check=True, capture_output=True,
                           text=True, timeout=120).stdout.strip()
    # Garbage tokens are a fifth of the examples: past the failed-authentication limit every call
    # from this address would be RESOURCE_EXHAUSTED, and the fuzzer would reach nothing behind it.
    server, address = serve(state, log, "--auth-failure-limit", str(AUTH_FAILURE_LIMIT))
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    world = World(address, state, log, server, channel, {Role.ADMIN: admin}, {}, [], _refused_package())
    try:
        _populate(world, tmp, model=model)
    except BaseException:
        world.close()
        raise
    return world


def _populate(w: World, tmp: Path, *, model: bool) -> None:
    with Client(w.address, w.tokens[Role.ADMIN]) as admin:
        for role in (Role.DATA_OWNER, Role.MANUFACTURER, Role.PRIVACY_OFFICER, Role.AUDITOR):
            created = admin.create_principal(f"fuzz {role.value}", role.value)
            w.tokens[role] = created.token
            if role is Role.MANUFACTURER:
                w.names["maker"] = created.principal.name
        w.names["organisation"] = next(iter(admin.list_organisations())).name
    table = samples.write_breast_cancer_csv(tmp / "bc.csv")
    w.names["feature"] = samples.feature_names()[0]
    with Client(w.address, w.tokens[Role.DATA_OWNER]) as owner:
        w.names["dataset"] = owner.upload_dataset(table, Schema(samples.breast_cancer_schema(), 5)).name
        w.upload = _upload_stream(_small_csv(table, SPARE_ROWS))
        w.names["spare"] = owner.upload_dataset(_write(tmp / "spare.csv", _small_csv(table, SPARE_ROWS)),
                                                Schema(samples.breast_cancer_schema(), 5)).name
    with Client(w.address, w.tokens[Role.PRIVACY_OFFICER]) as office:
        office.set_budget(w.names["dataset"], epsilon=20, delta=1e-4, reason="fuzz")
        office.share_dataset(w.names["dataset"], w.names["maker"], epsilon=10, delta=1e-4, reason="fuzz")
        office.set_approval_policy(w.names["dataset"], max_epsilon=5, auto_approve_epsilon=AUTO_APPROVE_EPSILON, reason="fuzz")
    w.names["model"], w.names["job"] = "models/" + "0" * 16, "jobs/" + "0" * 16   # real ones only with `model`
    if model:
        _submit_model_and_job(w)
    w.names["pending"] = _pending_request(w)
    w.names["release"] = _released_answer(w)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _pending_request(w: World) -> str:
    with Client(w.address, w.tokens[Role.MANUFACTURER]) as maker:
        query = _query(w)
        query.epsilon = 1.0
        try:
            maker.run_query(w.names["dataset"], query)
        except CleanroomClientError:
            pass  # expected: above auto-approval, it waits for an officer
    with Client(w.address, w.tokens[Role.PRIVACY_OFFICER]) as office:
        names = [r.name for r in office.pending_requests()]
    assert names, "setting up the RPC fuzzer: no privacy request was left pending"
    return names[0]


def _released_answer(w: World) -> str:
    """A statistics answer under auto-approval: a release the release RPCs can name."""
    with Client(w.address, w.tokens[Role.MANUFACTURER]) as maker:
        maker.run_query(w.names["dataset"], _query(w))
        return str(next(maker.list_releases(kind="statistics")).name)


def _submit_model_and_job(w: World) -> None:
    with Client(w.address, w.tokens[Role.MANUFACTURER]) as maker:
        version = maker.submit_model(ROOT / "tests/model_packages/mlp")
        assert version.state == models_pb2.MODEL_STATE_ACCEPTED, version.intake_report
        w.names["model"] = version.name
        w.names["job"] = maker.train(_training(w)).name   # waits for approval: ε 1 is above auto-approval
