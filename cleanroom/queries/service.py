"""DP statistics queries: validate, price, reserve, answer in the warm worker, commit, sign.

Everything that can be checked without data is checked before a reservation exists (the stored
schema is enough: columns, types, bounds, ε and δ), so a rejected query costs nothing. Once the
query goes to the worker its reservation is marked decrypted: from then on it is spent whatever
happens, per the ledger rules. The answer is committed for exactly the ε and δ it states (never
above the reservation) and carries a receipt signed by the enclave's attestation key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import enclave_sim
from cleanroom.attestation import Enclave
from cleanroom.domain import deid
from cleanroom.domain.approvals import RequestState
from cleanroom.domain.datasets import Dataset
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation
from cleanroom.domain.identity import Principal
from cleanroom.domain.privacy import Mechanism, Privacy, SpendState
from cleanroom.jobs.release import canonical_parameters
from cleanroom.metrics import Metrics
from cleanroom.privacy.approvals import ApprovalService, Estimate
from cleanroom.privacy.budgets import NOT_FOUND
from cleanroom.privacy.ledger import Ledger, SpendRequest
from cleanroom.queries.pool import DatasetSource, StatsWorkerPool, WorkerFailed
from cleanroom.stats import Answer, Query, expected_error, validate_query
from cleanroom.stats.plan import DEFAULT_ROWS_PER_PATIENT, make_plan
from cleanroom.stats.keys import check_cells, public_dims
from cleanroom.stats.query import column_types
from cleanroom.stats.wire import ANSWER_FILE, answer_from_dict, canonical_answer, canonical_query, query_to_dict, stats_workload
from cleanroom.storage import audit_repo, privacy_repo, repos
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.db import Database

log = logging.getLogger(__name__)

SPEND_KIND = "statistics"


def query_reference(dataset_id: str, query: Query) -> str:
    """The same query on the same dataset has the same reference (an approval names it)."""
    digest = hashlib.sha256(dataset_id.encode() + b"\x00" + canonical_query(query)).hexdigest()
    return f"queries/{digest[:32]}"


@dataclass(frozen=True)
class Priced:
    """A query checked against its dataset and priced, before any budget moves."""

    dataset: Dataset
    query: Query               # with its per-patient row bound settled
    schema: list[tuple[str, deid.ColumnType]]
    public_keys: dict[str, list[str]]
    cost: Privacy


@dataclass(frozen=True)
class QueryEstimate:
    cost: Privacy
    expected_error: dict[str, float]
    budget: Estimate


@dataclass(frozen=True)
class QueryResult:
    answer: Answer
    answer_json: bytes
    receipt: bytes
    spend_id: str


class ApprovalRequired(CleanroomError):
    """Above the dataset's auto-approve threshold: an officer decides, then the caller asks again."""

    def __init__(self, request_name: str) -> None:
        super().__init__(ErrorCode.FAILED_PRECONDITION,
                         f"this query needs a privacy officer's approval; once {request_name} is approved, "
                         "send the same query again naming it in privacy_request",
                         violations=[FieldViolation("privacy_request", request_name)])
        self.request_name = request_name


class StatsQueryService:
    def __init__(self, *, db: Database, approvals: ApprovalService, ledger: Ledger, enclave: Enclave,
                 blobs: BlobStore, pool: StatsWorkerPool, metrics: Metrics) -> None:
        self._db, self._approvals, self._ledger, self._enclave = db, approvals, ledger, enclave
        self._blobs, self._pool, self._metrics = blobs, pool, metrics

    # --- before any budget moves ---------------------------------------------------------------

    def _priced(self, principal: Principal, dataset_id: str | None, query: Query) -> Priced:
        """One read (the dataset, its share with the caller, its policy), then validation and the
        price: a query that sets no per-patient row bound gets the dataset policy's."""
        with self._db.read() as session:
            dataset = repos.get_dataset(session, dataset_id) if dataset_id else None
            if dataset is None or not privacy_repo.is_shared(session, dataset.id, principal.id):
                raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
            policy_rows = privacy_repo.get_policy(session, dataset.id).stats_rows_per_patient
        if query.max_rows_per_patient is None:
            query = dataclasses.replace(query, max_rows_per_patient=policy_rows)
        schema = [(c.name, c.type) for c in deid.stored_schema(dataset.columns)]
        public = public_group_keys(dataset)
        validate_query(query, schema, patient_column=_patient_column(dataset), public_group_keys=public)
        types = column_types(schema)
        plan = make_plan(query, types=types, public_group_keys=public, default_rows_per_patient=DEFAULT_ROWS_PER_PATIENT)
        if plan.public_keys:
            check_cells(public_dims(query, types, public))
        return Priced(dataset, query, schema, public, Privacy.cost(plan.epsilon, plan.delta))

    def estimate(self, principal: Principal, dataset_id: str | None, query: Query) -> QueryEstimate:
        """The dry run: cost, expected error and the budget that would remain. Nothing is spent."""
        priced = self._priced(principal, dataset_id, query)
        errors = expected_error(priced.query, schema=priced.schema, public_group_keys=priced.public_keys,
                                default_rows_per_patient=DEFAULT_ROWS_PER_PATIENT)
        return QueryEstimate(priced.cost, errors, self._approvals.estimate(principal, priced.dataset.id, principal.id, priced.cost))

    # --- answering -----------------------------------------------------------------------------

    def run(self, principal: Principal, dataset_id: str | None, query: Query, *, privacy_request: str = "") -> QueryResult:
        priced = self._priced(principal, dataset_id, query)
        dataset, query, cost = priced.dataset, priced.query, priced.cost
        reference = query_reference(dataset.id, query)
        # The spend counts as decrypted (spent whatever happens) once data is touched for it: before
        # a new worker receives the key, or before a warm worker is asked. With a warm
        # worker that is certain, so the reservation is born decrypted in its own transaction;
        # otherwise it is marked just in time and a worker that never got the key costs nothing.
        born_decrypted = not privacy_request and self._pool.is_warm(dataset.id)
        spend_id = self._reserve(principal, dataset, query, cost, reference, privacy_request, decrypted=born_decrypted)
        opening = (lambda: None) if born_decrypted else (lambda: self._ledger.mark_decrypted(spend_id))
        try:
            answer, answer_json, nonce = self._answer(priced, opening)
            self._gate(answer, cost)
            receipt = self._sign(dataset, answer, answer_json, nonce, query)
        except Exception as error:  # noqa: BLE001 - whatever failed, the spend is settled before the error leaves
            code = error.code.value if isinstance(error, CleanroomError) else ErrorCode.INTERNAL.value
            self._ledger.fail(spend_id, reason=f"query failed: {code}")
            self._metrics.stats_queries.labels(query.kind, "failed").inc()
            raise
        with self._db.transaction() as session:  # the commit and its audit entry, together
            self._ledger.release_in(session, spend_id, Privacy.cost(answer.epsilon, answer.delta))
            audit_repo.append(session, actor=principal.resource_name, action="stats.answer", target=f"{dataset.resource_name}/{reference}",
                              details={"kind": query.kind, "epsilon": answer.epsilon, "delta": answer.delta, "spend": spend_id})
        self._metrics.stats_queries.labels(query.kind, "answered").inc()
        return QueryResult(answer, answer_json, receipt, spend_id)

    def _reserve(self, principal: Principal, dataset: Dataset, query: Query, cost: Privacy, reference: str, privacy_request: str,
                 *, decrypted: bool) -> str:
        if privacy_request:
            return self._approved_spend(principal, privacy_request, reference)
        mechanism = Mechanism(name=f"stats-{query.kind}", accountant="basic", parameters=(("epsilon", query.epsilon), ("delta", query.delta)))
        try:
            request = self._approvals.submit(principal, SpendRequest(dataset.id, principal.id, SPEND_KIND, reference, cost, mechanism,
                                                                     stats_workload(dataset.id), decrypted_on_reserve=decrypted))
        except CleanroomError:
            self._metrics.stats_queries.labels(query.kind, "refused").inc()
            raise
        if request.state is not RequestState.APPROVED or request.spend_id is None:
            self._metrics.stats_queries.labels(query.kind, "pending").inc()
            raise ApprovalRequired(request.resource_name)
        return request.spend_id

    def _approved_spend(self, principal: Principal, name: str, reference: str) -> str:
        request_id = name.removeprefix("privacyRequests/")
        request = self._approvals.get(principal, request_id)
        if request.reference != reference:
            raise CleanroomError(ErrorCode.FAILED_PRECONDITION, "that privacy request was for a different query or dataset",
                                 violations=[FieldViolation("privacy_request", "must name the request made for this same query")])
        if request.state is not RequestState.APPROVED or request.spend_id is None:
            raise CleanroomError(ErrorCode.FAILED_PRECONDITION, f"that privacy request is {request.state.value}, not approved")
        with self._db.read() as session:
            spend = privacy_repo.get_spend(session, request.spend_id)
        if spend is None or spend.decrypted or spend.state is not SpendState.RESERVED:
            raise CleanroomError(ErrorCode.FAILED_PRECONDITION, "that approval was already used; submit the query again")
        return spend.id

    def _answer(self, priced: Priced, opening: Callable[[], None]) -> tuple[Answer, bytes, str]:
        dataset, query = priced.dataset, priced.query
        try:  # the wrapped key is read only when a worker has to start
            reply, nonce = self._pool.ask(dataset.id, lambda: self._source(priced), stats_workload(dataset.id), query_to_dict(query),
                                          opening=opening)
        except WorkerFailed as failure:
            log.warning("statistics worker failed", extra={"reason": failure.reason})
            raise CleanroomError(ErrorCode.UNAVAILABLE, "the statistics worker could not answer; the query's budget is refunded "
                                 "unless the data had already been opened for it. Try again later.") from None
        if "answer" not in reply:
            raise _worker_error(reply)
        answer = answer_from_dict(reply["answer"])
        return answer, canonical_answer(answer), nonce

    def _source(self, priced: Priced) -> DatasetSource:
        dataset = priced.dataset
        with self._db.read() as session:
            wrapped = repos.wrapped_dataset_key(session, dataset.id)
        if wrapped is None:
            raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
        return DatasetSource(dataset.id, self._blobs.path_of(dataset.id), wrapped, _patient_column(dataset), priced.public_keys)

    @staticmethod
    def _gate(answer: Answer, cost: Privacy) -> None:
        """Fail closed: an answer claiming more than was reserved is never released."""
        spent = Privacy.cost(answer.epsilon, answer.delta)
        if not spent.fits_in(cost):
            raise CleanroomError(ErrorCode.INTERNAL, "the answer was withheld: it did not match its reservation")

    def _sign(self, dataset: Dataset, answer: Answer, answer_json: bytes, nonce: str, query: Query) -> bytes:
        enclave = self._enclave
        parameters = {"query_sha256": hashlib.sha256(canonical_query(query)).hexdigest(), "delta": answer.delta,
                      "mechanism": answer.mechanism.name, "rows_per_patient": answer.rows_per_patient,
                      **{k: v for k, v in answer.mechanism.parameters}}
        return enclave_sim.sign_report(
            enclave.attestation_key, measurement=enclave.measurement, workload=stats_workload(dataset.id),
            dp_parameters=canonical_parameters(parameters), epsilon_spent=answer.epsilon, accountant="basic",
            dataset_commitment=dataset.ciphertext_sha256, released_files={ANSWER_FILE: answer_json}, nonce=nonce,
        )


def public_group_keys(dataset: Dataset) -> dict[str, list[str]]:
    """Key spaces that follow from the schema alone. An age band's labels come from its rule, so a
    grouping by it answers every band (empty ones too, with noise) without a τ-threshold or δ."""
    return {c.name: c.generalization.labels() for c in dataset.columns
            if c.role is deid.ColumnRole.QUASI_IDENTIFIER and isinstance(c.generalization, deid.AgeBand)}


def _patient_column(dataset: Dataset) -> str:
    return next(c.name for c in dataset.columns if c.role is deid.ColumnRole.PATIENT_KEY)


def _worker_error(reply: dict) -> CleanroomError:
    """The worker's error, as service code worded it; anything else is an internal failure."""
    try:
        code = ErrorCode(reply.get("error"))
    except ValueError:
        return CleanroomError(ErrorCode.INTERNAL, "the statistics query failed inside the service")
    violations = [FieldViolation(str(f), str(d)) for f, d in reply.get("violations", [])]
    return CleanroomError(code, str(reply.get("message", "the statistics query failed")), violations=violations)
