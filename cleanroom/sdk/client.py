"""The Python SDK: one Client per server, every call a method, errors as CleanroomClientError."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc

from cleanroom.domain.streams import WindowSpec
from cleanroom.sdk import audit_export
from cleanroom.sdk.cohort import Site, cohort_protos
from cleanroom.sdk.errors import CleanroomClientError, from_rpc_error
from cleanroom.sdk.releases import ReleaseCalls
from cleanroom.sdk.schema import Schema, with_linkage_column
from cleanroom.sdk.streams import set_windows
from cleanroom.sdk.tokens import TokenCalls
from cleanroom.statistics.engine.query import Query
from cleanroom.v1 import (
    common_pb2,
    datasets_pb2,
    datasets_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    releases_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
)
from cleanroom.wire.stats import query_to_proto

CHUNK_BYTES = 1 << 20
Progress = Callable[[int, int], object]  # (bytes sent, total bytes); what it returns is ignored
T = TypeVar("T")

ROLES = {
    "data_owner": common_pb2.DATA_OWNER,
    "manufacturer": common_pb2.MANUFACTURER,
    "privacy_officer": common_pb2.PRIVACY_OFFICER,
    "auditor": common_pb2.AUDITOR,
    "admin": common_pb2.ADMIN,
}
ORGANISATION_KINDS = {
    "hospital": identity_pb2.ORGANISATION_KIND_HOSPITAL,
    "manufacturer": identity_pb2.ORGANISATION_KIND_MANUFACTURER,
}


def _request_id() -> str:
    return uuid.uuid4().hex


def _format_of(path: Path) -> datasets_pb2.FileFormat.ValueType:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return datasets_pb2.CSV
    if suffix in (".parquet", ".pq"):
        return datasets_pb2.PARQUET
    raise CleanroomClientError(grpc.StatusCode.INVALID_ARGUMENT, f"cannot tell the format of {path.name}: use .csv or .parquet")


def _credentials(tls_ca: str | None, client_cert: str | None, client_key: str | None) -> grpc.ChannelCredentials:
    def read(p: str | None) -> bytes | None:
        return Path(p).read_bytes() if p else None

    return grpc.ssl_channel_credentials(read(tls_ca), read(client_key), read(client_cert))


class Client(TokenCalls, ReleaseCalls):
    def __init__(
        self,
        target: str,
        token: str | None = None,
        *,
        tls_ca: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        timeout: float | None = None,
    ) -> None:
        options = [("grpc.max_send_message_length", 4 << 20), ("grpc.max_receive_message_length", 4 << 20)]
        if tls_ca or client_cert:
            self._channel = grpc.secure_channel(target, _credentials(tls_ca, client_cert, client_key), options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        self.admin = identity_pb2_grpc.AdminServiceStub(self._channel)
        self.identity = identity_pb2_grpc.IdentityServiceStub(self._channel)
        self.datasets = datasets_pb2_grpc.DatasetServiceStub(self._channel)
        self.privacy = privacy_pb2_grpc.PrivacyServiceStub(self._channel)
        self.audit = privacy_pb2_grpc.AuditServiceStub(self._channel)
        self.models = models_pb2_grpc.ModelServiceStub(self._channel)
        self.attestation = models_pb2_grpc.AttestationServiceStub(self._channel)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self.stats = stats_pb2_grpc.StatsServiceStub(self._channel)
        self.releases = releases_pb2_grpc.ReleaseServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        try:
            return method(request, metadata=self._metadata, timeout=timeout or self._timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    # --- identity and admin -------------------------------------------------------------------

    def whoami(self) -> identity_pb2.Principal:
        return self._call(self.identity.WhoAmI, identity_pb2.WhoAmIRequest())

    def create_principal(self, display_name: str, role: str, *, organisation: str = "", request_id: str | None = None,
                         token_lifetime: timedelta | None = None) -> identity_pb2.CreatePrincipalResponse:
        """`organisation` ("organisations/{id}") left empty gives the role's default organisation;
        without `token_lifetime` the first token never expires."""
        if role not in ROLES:
            raise CleanroomClientError(grpc.StatusCode.INVALID_ARGUMENT, f"role must be one of {', '.join(ROLES)}")
        request = identity_pb2.CreatePrincipalRequest(
            request_id=request_id or _request_id(), display_name=display_name, role=ROLES[role], organisation=organisation
        )
        if token_lifetime is not None:
            request.token_lifetime.FromTimedelta(token_lifetime)
        return self._call(self.admin.CreatePrincipal, request)

    def create_organisation(self, display_name: str, kind: str, *, request_id: str | None = None) -> identity_pb2.Organisation:
        """`kind`: "hospital" or "manufacturer"."""
        if kind not in ORGANISATION_KINDS:
            raise CleanroomClientError(grpc.StatusCode.INVALID_ARGUMENT, f"kind must be one of {', '.join(ORGANISATION_KINDS)}")
        request = identity_pb2.CreateOrganisationRequest(
            request_id=request_id or _request_id(), display_name=display_name, kind=ORGANISATION_KINDS[kind])
        return self._call(self.admin.CreateOrganisation, request)

    def list_organisations(self, page_size: int = 0) -> Iterator[identity_pb2.Organisation]:
        return self._pages(self.admin.ListOrganisations, identity_pb2.ListOrganisationsRequest(page_size=page_size), "organisations")

    def list_principals(self, page_size: int = 0) -> Iterator[identity_pb2.Principal]:
        return self._pages(self.admin.ListPrincipals, identity_pb2.ListPrincipalsRequest(page_size=page_size), "principals")

    def create_console_login(self, principal: str, username: str, *,
                             request_id: str | None = None) -> identity_pb2.CreateConsoleLoginResponse:
        """A web-console sign-in for `principal` ("principals/{id}"): its one-time code is in the answer."""
        return self._call(self.admin.CreateConsoleLogin, identity_pb2.CreateConsoleLoginRequest(
            request_id=request_id or _request_id(), principal=principal, username=username))

    def sign_in(self, username: str, *, password: str | None = None, one_time_code: str | None = None) -> identity_pb2.SignInResponse:
        """Exchanges a console login for a short-lived bearer token (needs no token of its own)."""
        request = identity_pb2.SignInRequest(username=username)
        if one_time_code is not None:
            request.one_time_code = one_time_code
        else:
            request.password = password or ""
        return self._call(self.identity.SignIn, request)

    def set_console_password(self, new_password: str) -> identity_pb2.SetConsolePasswordResponse:
        return self._call(self.identity.SetConsolePassword, identity_pb2.SetConsolePasswordRequest(new_password=new_password))

    def sign_out(self, token: str) -> None:
        """Revokes this client's own session token, named "tokens/{id}"."""
        self._call(self.identity.SignOut, identity_pb2.SignOutRequest(token=token))

    def rotate_keys(self) -> identity_pb2.RotateKeysResponse:
        return self._call(self.admin.RotateKeys, identity_pb2.RotateKeysRequest(request_id=_request_id()))

    # --- datasets ------------------------------------------------------------------------------

    def upload_dataset(
        self,
        path: str | Path,
        schema: Schema,
        *,
        display_name: str | None = None,
        description: str = "",
        request_id: str | None = None,
        progress: Progress | None = None,
        linkage_column: str | None = None,
        stream: datasets_pb2.StreamSpec | None = None,
    ) -> datasets_pb2.Dataset:
        """`linkage_column` declares that column LINKAGE_ID (as role = "linkage_id" in the schema does).
        `stream` (sdk.streams.stream_spec; else the schema's `[stream]` table) uploads the file as a
        stream of readings: its TIME column, its channels and their units."""
        path = Path(path)
        if linkage_column:
            schema = with_linkage_column(schema, linkage_column)
        metadata = datasets_pb2.UploadMetadata(
            request_id=request_id or _request_id(),
            display_name=display_name or path.stem,
            format=_format_of(path),
            columns=schema.columns,
            policy=datasets_pb2.DeidentificationPolicy(k_anonymity=schema.k_anonymity),
            description=description,
            size_bytes=path.stat().st_size,
        )
        stream = stream if stream is not None else schema.stream
        if stream is not None:
            metadata.stream.CopyFrom(stream)
        return self._call(self.datasets.UploadDataset, _upload_messages(path, metadata, progress))

    def get_dataset(self, name: str) -> datasets_pb2.Dataset:
        return self._call(self.datasets.GetDataset, datasets_pb2.GetDatasetRequest(name=name))

    def list_datasets(self, page_size: int = 0) -> Iterator[datasets_pb2.Dataset]:
        return self._pages(self.datasets.ListDatasets, datasets_pb2.ListDatasetsRequest(page_size=page_size), "datasets")

    def delete_dataset(self, name: str, *, request_id: str | None = None) -> datasets_pb2.DeleteDatasetResponse:
        request = datasets_pb2.DeleteDatasetRequest(name=name, request_id=request_id or _request_id())
        return self._call(self.datasets.DeleteDataset, request)

    # --- privacy budgets and approvals (privacy officer; manufacturers: their own budget) --------

    def share_dataset(self, dataset: str, manufacturer: str, *, epsilon: float, delta: float, reason: str) -> privacy_pb2.BudgetReport:
        request = privacy_pb2.ShareDatasetRequest(
            request_id=_request_id(), dataset=dataset, manufacturer=manufacturer,
            cap=privacy_pb2.PrivacyAmount(epsilon=epsilon, delta=delta), reason=reason,
        )
        return self._call(self.privacy.ShareDataset, request)

    def set_budget(self, dataset: str, *, epsilon: float, delta: float, reason: str, manufacturer: str = "") -> privacy_pb2.BudgetReport:
        request = privacy_pb2.SetBudgetRequest(
            request_id=_request_id(), dataset=dataset, manufacturer=manufacturer,
            cap=privacy_pb2.PrivacyAmount(epsilon=epsilon, delta=delta), reason=reason,
        )
        return self._call(self.privacy.SetBudget, request)

    def get_budgets(self, dataset: str) -> privacy_pb2.BudgetReport:
        return self._call(self.privacy.GetBudgets, privacy_pb2.GetBudgetsRequest(dataset=dataset))

    def set_approval_policy(
        self, dataset: str, *, max_epsilon: float, auto_approve_epsilon: float = 0.0, max_delta: float = 0.0, reason: str,
        stats_rows_per_patient: int = 0, require_privacy_audit: bool = False, approvals_required: int = 0,
    ) -> privacy_pb2.ApprovalPolicy:
        """require_privacy_audit: training jobs release weights only after the one-run privacy audit.
        approvals_required: 2 for two different officers' approvals (0 keeps the default, 1)."""
        policy = privacy_pb2.ApprovalPolicy(
            dataset=dataset, max_epsilon_per_request=max_epsilon, max_delta_per_request=max_delta,
            auto_approve_epsilon=auto_approve_epsilon, stats_rows_per_patient=stats_rows_per_patient,
            require_privacy_audit=require_privacy_audit, approvals_required=approvals_required,
        )
        request = privacy_pb2.SetApprovalPolicyRequest(request_id=_request_id(), policy=policy, reason=reason)
        return self._call(self.privacy.SetApprovalPolicy, request)

    def estimate_cost(self, dataset: str, *, epsilon: float, delta: float, manufacturer: str = "") -> privacy_pb2.CostEstimate:
        request = privacy_pb2.EstimateCostRequest(
            dataset=dataset, manufacturer=manufacturer, cost=privacy_pb2.PrivacyAmount(epsilon=epsilon, delta=delta)
        )
        return self._call(self.privacy.EstimateCost, request)

    def ledger(self, *, dataset: str = "", manufacturer: str = "", kind: str = "", page_size: int = 0) -> Iterator[privacy_pb2.LedgerEvent]:
        request = privacy_pb2.ListLedgerRequest(dataset=dataset, manufacturer=manufacturer, kind=kind, page_size=page_size)
        return self._pages(self.privacy.ListLedger, request, "events")

    def pending_requests(self, page_size: int = 0) -> Iterator[privacy_pb2.PrivacyRequest]:
        return self._pages(self.privacy.ListPendingRequests, privacy_pb2.ListPendingRequestsRequest(page_size=page_size), "requests")

    def pending_page(self, page_size: int = 0, page_token: str = "") -> privacy_pb2.ListPendingRequestsResponse:
        """One page of the officer's inbox, with each dataset's budgets once every pending request were approved."""
        request = privacy_pb2.ListPendingRequestsRequest(page_size=page_size, page_token=page_token)
        return self._call(self.privacy.ListPendingRequests, request)

    def set_share_state(self, dataset: str, manufacturer: str, state: str, *, reason: str) -> privacy_pb2.BudgetReport:
        """state: "paused" (no new reservations), "active" (resumed) or "withdrawn" (final)."""
        request = privacy_pb2.SetShareStateRequest(request_id=_request_id(), dataset=dataset, manufacturer=manufacturer,
                                                   state=state, reason=reason)
        return self._call(self.privacy.SetShareState, request)

    def approve(self, name: str, reason: str) -> privacy_pb2.PrivacyRequest:
        return self._call(self.privacy.ApproveRequest, privacy_pb2.DecideRequest(request_id=_request_id(), name=name, reason=reason))

    def reject(self, name: str, reason: str) -> privacy_pb2.PrivacyRequest:
        return self._call(self.privacy.RejectRequest, privacy_pb2.DecideRequest(request_id=_request_id(), name=name, reason=reason))

    # --- audit -----------------------------------------------------------------------------------

    def verify_audit_log(self, *, anchor_seq: int = 0, anchor_hash: str = "") -> privacy_pb2.AuditVerification:
        request = privacy_pb2.VerifyAuditLogRequest(anchor_seq=anchor_seq, anchor_hash=anchor_hash)
        return self._call(self.audit.VerifyAuditLog, request)

    def export_audit_log(self, after_seq: int = 0) -> Iterator[str]:
        """The audit trail as JSON lines, one entry each."""
        try:
            for entry in self.audit.ExportAuditLog(privacy_pb2.ExportAuditLogRequest(after_seq=after_seq), metadata=self._metadata):
                yield entry.json
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def signed_audit_export(self) -> bytes:
        """Your view of the audit log, signed by the service for a regulator: a JSON document that
        cleanroom.sdk.audit_export.verify_audit_export checks against a pinned trust root."""
        signed = self._call(self.audit.SignAuditExport, privacy_pb2.SignAuditExportRequest())
        return audit_export.assemble(signed.statement, signed.certificate, self.export_audit_log())

    # --- models (manufacturer) -------------------------------------------------------------------

    def submit_model(self, directory: str | Path, *, request_id: str | None = None, progress: Progress | None = None) -> models_pb2.ModelVersion:
        """Packs a model package directory (cleanroom-model.toml, model.py, weights) and submits it."""
        from cleanroom.models.intake.pack import pack_package

        package = pack_package(Path(directory))
        metadata = models_pb2.SubmitModelMetadata(request_id=request_id or _request_id(), size_bytes=len(package))
        messages = _stream_bytes(models_pb2.SubmitModelRequest, metadata, package, progress, models_pb2.SubmitModelTrailer)
        return self._call(self.models.SubmitModel, messages)

    def get_model(self, name: str) -> models_pb2.ModelVersion:
        return self._call(self.models.GetModel, models_pb2.GetModelRequest(name=name))

    def list_models(self, page_size: int = 0) -> Iterator[models_pb2.ModelVersion]:
        return self._pages(self.models.ListModels, models_pb2.ListModelsRequest(page_size=page_size), "models")

    def trust_bundle(self) -> models_pb2.TrustBundle:
        return self._call(self.attestation.GetTrustBundle, models_pb2.GetTrustBundleRequest())

    # --- DP jobs (manufacturer) --------------------------------------------------------------------

    def train(self, spec: jobs_pb2.TrainingSpec, *, cohort: Sequence[Site | common_pb2.CohortSite] = (),
              windows: WindowSpec | jobs_pb2.WindowSpec | None = None, request_id: str | None = None) -> jobs_pb2.Job:
        """Submits DP-SGD training. Recipe fields left at 0 / "" (epochs, expected_batch_patients,
        learning_rate, optimizer, clipping_norm) are chosen by the service's budget-aware recipe: the
        returned job's `training` echoes the values and `training.recipe` names the rule (verify_job
        takes them from there). The report options (sensitivity_at_specificity,
        specificity_at_sensitivity, net_benefit_thresholds, score_bins) shape the validation report.
        `cohort`: several hospitals' datasets instead of `spec.dataset` (sdk.Site: dataset, column
        mapping, "train" or "validate"); they are written into `spec`, so keep it for verify_job.
        `windows` (a stream dataset; sdk.streams.window_spec): examples are windows of the stream,
        `spec.feature_columns` its channels, and a label rule in them leaves `spec.label_column` empty."""
        _set_cohort(spec, cohort)
        set_windows(spec, windows)
        return self._call(self.jobs.SubmitTraining, jobs_pb2.SubmitTrainingRequest(request_id=request_id or _request_id(), spec=spec))

    def evaluate(self, spec: jobs_pb2.EvaluationSpec, *, cohort: Sequence[Site | common_pb2.CohortSite] = (),
                 windows: WindowSpec | jobs_pb2.WindowSpec | None = None, request_id: str | None = None) -> jobs_pb2.Job:
        """Submits a DP evaluation. A binary model's report gives sensitivity at each of
        `spec.sensitivity_at_specificity`, specificity at each of `spec.specificity_at_sensitivity`
        and net benefit at each of `spec.net_benefit_thresholds` (each ≤ 16 values in (0, 1); empty:
        the defaults), over `spec.score_bins` bins (4 to 640; 0: the documented rule). `cohort` as
        in train(): the report gives each site and the pooled result. `windows` as in train()."""
        _set_cohort(spec, cohort)
        set_windows(spec, windows)
        return self._call(self.jobs.SubmitEvaluation, jobs_pb2.SubmitEvaluationRequest(request_id=request_id or _request_id(), spec=spec))

    def get_job(self, name: str) -> jobs_pb2.Job:
        return self._call(self.jobs.GetJob, jobs_pb2.GetJobRequest(name=name))

    def list_jobs(self) -> Iterator[jobs_pb2.Job]:
        return self._pages(self.jobs.ListJobs, jobs_pb2.ListJobsRequest(), "jobs")

    def cancel_job(self, name: str) -> jobs_pb2.Job:
        return self._call(self.jobs.CancelJob, jobs_pb2.CancelJobRequest(name=name, request_id=_request_id()))

    def watch_job(self, name: str, timeout: float | None = None) -> Iterator[jobs_pb2.Job]:
        """Coarse states until the job is final."""
        try:
            yield from self.jobs.WatchJob(jobs_pb2.WatchJobRequest(name=name), metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def wait_job(self, name: str, timeout: float | None = None) -> jobs_pb2.Job:
        last = None
        for update in self.watch_job(name, timeout):
            last = update
        assert last is not None
        return last

    def download(self, name: str, artifact: str) -> bytes:
        request = jobs_pb2.DownloadArtifactRequest(job=name, artifact=artifact)
        try:
            return b"".join(c.data for c in self.jobs.DownloadArtifact(request, metadata=self._metadata))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def download_all(self, job: jobs_pb2.Job) -> dict[str, bytes]:
        return {a.name: self.download(job.name, a.name) for a in job.artifacts}

    # --- DP statistics -------------------------------------------------------------------------

    def run_query(self, dataset: str, query: Query | stats_pb2.StatsQuery, *, privacy_request: str = "",
                  cohort: Sequence[Site | common_pb2.CohortSite] = (), request_id: str | None = None) -> stats_pb2.QueryAnswer:
        """One DP answer, charged to the caller's share of the dataset's budget. With `cohort`
        (sdk.Site: dataset and column mapping; pass dataset="") the query reads several hospitals'
        datasets as one table, its column names being study names; every site is charged the cost."""
        message = query if isinstance(query, stats_pb2.StatsQuery) else query_to_proto(query)
        request = stats_pb2.RunQueryRequest(request_id=request_id or _request_id(), dataset=dataset, query=message,
                                            privacy_request=privacy_request, cohort=cohort_protos(cohort))
        return self._call(self.stats.RunQuery, request)

    def estimate_query(self, dataset: str, query: Query | stats_pb2.StatsQuery, *,
                       cohort: Sequence[Site | common_pb2.CohortSite] = ()) -> stats_pb2.QueryEstimate:
        """The dry run: cost, expected error, and the budget before and after (a cohort: each site's
        in `site_budgets`, and who counts as one person in `linkage`). Spends nothing."""
        message = query if isinstance(query, stats_pb2.StatsQuery) else query_to_proto(query)
        return self._call(self.stats.EstimateQuery, stats_pb2.EstimateQueryRequest(dataset=dataset, query=message,
                                                                                    cohort=cohort_protos(cohort)))

    def _pages(self, method: Callable[..., Any], request: Any, field: str) -> Iterator[Any]:
        while True:
            response = self._call(method, request)
            yield from getattr(response, field)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token


def _set_cohort(spec: jobs_pb2.TrainingSpec | jobs_pb2.EvaluationSpec, cohort: Sequence[Site | common_pb2.CohortSite]) -> None:
    if cohort:
        spec.ClearField("cohort")
        spec.cohort.extend(cohort_protos(cohort))


def _stream_bytes(message_type: Any, metadata: Any, data: bytes, progress: Progress | None, trailer_type: Any) -> Iterator[Any]:
    yield message_type(metadata=metadata)
    for start in range(0, len(data), CHUNK_BYTES):
        yield message_type(chunk=data[start:start + CHUNK_BYTES])
        if progress:
            progress(min(start + CHUNK_BYTES, len(data)), len(data))
    yield message_type(trailer=trailer_type(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))


def _upload_messages(path: Path, metadata: datasets_pb2.UploadMetadata, progress: Progress | None) -> Iterator[datasets_pb2.UploadDatasetRequest]:
    yield datasets_pb2.UploadDatasetRequest(metadata=metadata)
    digest, sent, total = hashlib.sha256(), 0, metadata.size_bytes
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            sent += len(chunk)
            yield datasets_pb2.UploadDatasetRequest(chunk=chunk)
            if progress:
                progress(sent, total)
    trailer = datasets_pb2.UploadTrailer(size_bytes=sent, sha256=digest.hexdigest())
    yield datasets_pb2.UploadDatasetRequest(trailer=trailer)
