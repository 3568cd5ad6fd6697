"""DP statistics queries: validate, price, pay, answer in the warm worker, sign, record.

Everything that can be checked without data is checked before any budget moves (the stored
schema is enough: columns, types, bounds, ε and δ), so a rejected query costs nothing. A query
within the dataset's auto-approve threshold is paid from the caller's statistics allowance
(cleanroom.statistics.allowance: one ledger reservation for a burst of queries, its records written
by the group commit); a query above it needs an officer's approval and then has its own
reservation, committed with its audit entry in one transaction. Either way the cost counts as
spent once the query's data is touched, an answer never claims more than was paid, an answer
leaves only once its audit entry is committed (audit before release: a drawn answer waits for its
group commit's batch), and every answer carries a receipt signed by the enclave's attestation key.

A cohort query (several hospitals' datasets as one table: cleanroom.statistics.cohort) is checked
against every site, always has its own reservation on every site's budgets at once (no allowance),
waits for every site's policy or officers, and is audited once per site.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

import enclave_sim
from cleanroom.attestation.enclave import Enclave
from cleanroom.domain import deid
from cleanroom.domain.approvals import ApprovalPolicy, Decision, PrivacyRequest, RequestState, WorkSummary, check_against_policy
from cleanroom.domain.cohort import CohortSite
from cleanroom.domain.datasets import Dataset
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.identity import Principal
from cleanroom.domain.privacy import Mechanism, Privacy, SpendState
from cleanroom.domain.releases import new_answer_release_id
from cleanroom.jobs.release import canonical_parameters
from cleanroom.observability.metrics import Metrics
from cleanroom.privacy.approvals import ApprovalService, GroupRequest
from cleanroom.privacy.budgets import NOT_FOUND
from cleanroom.privacy.ledger import Ledger, SpendRequest
from cleanroom.statistics.allowance import Allowances
from cleanroom.statistics.cohort import UNIT_COLUMN, CohortPriced, price_cohort
from cleanroom.statistics.described import Described, patient_column, stream_settings
from cleanroom.statistics.engine import Answer, Query, expected_error
from cleanroom.statistics.engine.codec import (
    ANSWER_FILE,
    answer_from_dict,
    canonical_answer,
    query_to_dict,
    stats_workload,
)
from cleanroom.statistics.engine.plan import DEFAULT_ROWS_PER_PATIENT
from cleanroom.statistics.outcomes import ApprovalRequired, QueryEstimate, QueryResult, error_code, worker_error
from cleanroom.statistics.pool import CohortSource, DatasetSource, SiteSource, Source, StatsWorkerPool, WorkerFailed
from cleanroom.storage import audit_repo, clock, dataset_repo, privacy_repo, release_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.db import Database
from cleanroom.storage.group_commit import GroupCommit, NotCommitted

log = logging.getLogger(__name__)

SPEND_KIND = "statistics"
DATASET_CACHE = 256
CHECKED_QUERIES = 1024  # per dataset
# An allowance pays for queries of every kind; each answer's own mechanism is in its receipt and audit entry.
ALLOWANCE_MECHANISM = Mechanism(name="statistics-allowance", accountant="basic")


@dataclass(frozen=True)
class Priced:
    """A query checked against its dataset and priced, before any budget moves."""

    dataset: Dataset
    query: Query               # with its per-patient row bound settled
    schema: list[tuple[str, deid.ColumnType]]
    public_keys: dict[str, list[str]]
    cost: Privacy
    policy: ApprovalPolicy
    query_sha256: str          # of the canonical query: the receipt names it
    reference: str            # the same query on the same dataset has the same reference


@dataclass(frozen=True)
class _Work:
    """What answering and signing need, alike for one dataset and a cohort."""

    key: str                          # the warm worker's: a dataset id, or a cohort's key
    source: Callable[[], Source]      # read only when a worker has to start
    workload: str
    query: Query
    cost: Privacy
    query_sha256: str
    commitment: str                   # the receipt's dataset commitment
    stream_readings: int = 0          # a stream dataset's stored readings (they lengthen its answer's time limit)


class StatsQueryService:
    def __init__(self, *, db: Database, approvals: ApprovalService, ledger: Ledger, enclave: Enclave,
                 blobs: BlobStore, pool: StatsWorkerPool, metrics: Metrics, journal: GroupCommit, allowances: Allowances) -> None:
        self._db, self._approvals, self._ledger, self._enclave = db, approvals, ledger, enclave
        self._blobs, self._pool, self._metrics = blobs, pool, metrics
        self._journal, self._allowances = journal, allowances
        self._datasets: dict[str, Described] = {}

    # --- before any budget moves ---------------------------------------------------------------

    def _priced(self, principal: Principal, dataset_id: str | None, query: Query) -> Priced:
        """One read (whether the dataset is shared with the caller, and its policy), then validation
        and the price: a query that sets no per-patient row bound gets the dataset policy's."""
        policy = privacy_repo.shared_policy(self._db.lookup(), dataset_id, principal.id) if dataset_id else None
        described = self._described(dataset_id) if policy is not None and dataset_id else None
        if described is None or policy is None:
            raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
        if query.max_rows_per_patient is None:
            query = dataclasses.replace(query, max_rows_per_patient=policy.stats_rows_per_patient)
        checked = described.checked(query)
        schema, public_keys = described.frame(query)  # a stream view's columns, or the dataset's
        return Priced(described.dataset, query, schema, public_keys, checked.cost, policy,
                      checked.query_sha256, checked.reference)

    def _described(self, dataset_id: str) -> Described | None:
        """A dataset's description never changes after intake, so it is read once; whether it still
        exists (and is shared) is checked on every query by `shared_policy`."""
        described = self._datasets.get(dataset_id)
        if described is None:
            with self._db.read() as session:
                dataset = dataset_repo.get_dataset(session, dataset_id)
            if dataset is None:
                return None
            described = Described.of(dataset)
            if len(self._datasets) >= DATASET_CACHE:
                self._datasets.clear()
            self._datasets[dataset_id] = described
        return described

    def estimate(self, principal: Principal, dataset_id: str | None, query: Query) -> QueryEstimate:
        """The dry run: cost, expected error and the budget that would remain. Nothing is spent."""
        priced = self._priced(principal, dataset_id, query)
        errors = expected_error(priced.query, schema=priced.schema, public_group_keys=priced.public_keys,
                                default_rows_per_patient=DEFAULT_ROWS_PER_PATIENT)
        # Budget this caller's open allowance holds unused is still the caller's to spend.
        budget = self._approvals.estimate(principal, priced.dataset.id, principal.id, priced.cost,
                                          held=self.held(priced.dataset.id, principal.id))
        return QueryEstimate(priced.cost, errors, budget)

    # --- answering -----------------------------------------------------------------------------

    def run(self, principal: Principal, dataset_id: str | None, query: Query, *, privacy_request: str = "") -> QueryResult:
        priced = self._priced(principal, dataset_id, query)
        decision = check_against_policy(priced.policy, priced.cost, priced.dataset.patient_count).decision
        if privacy_request or decision is not Decision.AUTO_APPROVE:
            return self._run_reserved(principal, priced, privacy_request)
        return self._run_drawn(principal, priced)

    # --- cohorts: several hospitals' datasets as one table ---------------------------------------

    def estimate_cohort(self, principal: Principal, sites: tuple[CohortSite, ...], query: Query) -> QueryEstimate:
        """The dry run over a cohort: the cost every site would be charged, the expected error, each
        site's budget lines and whether it fits, and who counts as one person. Nothing is spent."""
        priced = self._priced_cohort(principal, sites, query)
        errors = expected_error(priced.query, schema=priced.schema, public_group_keys=priced.public_keys,
                                default_rows_per_patient=DEFAULT_ROWS_PER_PATIENT)
        budgets = tuple(self._approvals.estimate_cohort(principal, priced.dataset_ids, principal.id, priced.cost))
        return QueryEstimate(priced.cost, errors, budgets[0], site_budgets=budgets, linkage=priced.linkage())

    def run_cohort(self, principal: Principal, sites: tuple[CohortSite, ...], query: Query, *,
                   privacy_request: str = "") -> QueryResult:
        """A cohort query: always its own reservation on every site's budgets (all or none; no
        allowance), approved by every site's policy or officers, committed with one audit entry per
        site (each hospital's trail holds its own part)."""
        priced = self._priced_cohort(principal, sites, query)
        spend_id = self._reserve_cohort(principal, priced, privacy_request)
        return self._answer_reserved(spend_id, self._cohort_work(priced), lambda: self._ledger.mark_decrypted(spend_id),
                                     lambda spent: priced.audit_records(principal.resource_name, "stats.answer", spent, spend_id),
                                     _Filed(principal.id, tuple(priced.dataset_ids)))

    def _priced_cohort(self, principal: Principal, sites: tuple[CohortSite, ...], query: Query) -> CohortPriced:
        """Every site shared with the caller (NOT_FOUND as for one dataset), then checked and priced."""
        described, rows = [], []
        for site in sites:
            policy = privacy_repo.shared_policy(self._db.lookup(), site.dataset_id, principal.id)
            facts = self._described(site.dataset_id) if policy is not None else None
            if facts is None or policy is None:
                raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
            described.append(facts)
            rows.append(policy.stats_rows_per_patient)
        if query.stream_view is not None or any(facts.dataset.is_stream for facts in described):
            raise bad_request("cohort statistics over streams are not supported yet",
                              FieldViolation("cohort", "every site of a cohort query is a table dataset"))
        return price_cohort(sites, described, rows, query)

    def _reserve_cohort(self, principal: Principal, priced: CohortPriced, privacy_request: str) -> str:
        if privacy_request:
            return self._approved_spend(principal, privacy_request, priced.reference)
        first, *others = priced.dataset_ids
        request = SpendRequest(first, principal.id, SPEND_KIND, priced.reference, priced.cost, _mechanism(priced.query),
                               stats_workload(priced.cohort), cohort=tuple(others), work=work_of(priced.query))
        return self._granted(priced.query, lambda: self._approvals.submit_cohort(principal, request))

    def _unused(self, spend_id: str) -> str:
        with self._db.read() as session:
            spend = privacy_repo.get_spend(session, spend_id)
        if spend is None or spend.decrypted or spend.state is not SpendState.RESERVED:
            raise CleanroomError(ErrorCode.FAILED_PRECONDITION, "that approval was already used; submit the query again")
        return spend_id

    def _cohort_work(self, priced: CohortPriced) -> _Work:
        return _Work(priced.key, lambda: self._cohort_source(priced), stats_workload(priced.cohort), priced.query, priced.cost,
                     priced.query_sha256, priced.commitment())

    def _cohort_source(self, priced: CohortPriced) -> CohortSource:
        sites = []
        with self._db.read() as session:
            for facts, columns in zip(priced.described, priced.site_columns, strict=True):
                wrapped = dataset_repo.wrapped_dataset_key(session, facts.dataset.id)
                if wrapped is None:
                    raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
                sites.append(SiteSource(facts.dataset.id, self._blobs.path_of(facts.dataset.id), wrapped, facts.patient_column,
                                        facts.linkage_column, columns))
        return CohortSource(priced.key, tuple(sites), UNIT_COLUMN, priced.public_keys)

    def _run_drawn(self, principal: Principal, priced: Priced) -> QueryResult:
        """An auto-approved query: paid from the caller's allowance, recorded by the group commit."""
        dataset, query = priced.dataset, priced.query
        request = SpendRequest(dataset.id, principal.id, SPEND_KIND, priced.reference, priced.cost,
                               ALLOWANCE_MECHANISM, stats_workload(dataset.id))
        try:
            draw = self._allowances.draw(request, warm=self._pool.is_warm(dataset.id))
        except CleanroomError:
            self._metrics.stats_queries.labels(query.kind, "refused").inc()
            raise
        try:
            answer, answer_json, receipt = self._answered(self._work(priced), lambda: self._allowances.open_data(draw))
        except Exception as error:  # noqa: BLE001 - whatever failed, the draw is settled before the error leaves
            try:
                if draw.opened:  # the data was touched for it: spent, and recorded as such
                    self._journal.submit(self._record(principal, priced, "stats.failed", draw.cost, draw.spend_id,
                                                      outcome=error_code(error)))
            finally:
                self._allowances.finish(draw, spent=draw.opened)
            self._metrics.stats_queries.labels(query.kind, "failed").inc()
            raise
        try:  # audit before release: the answer leaves only once its entry (what it paid) is committed
            record = self._record(principal, priced, "stats.answer", draw.cost, draw.spend_id)
            filed = _Filed(principal.id, (dataset.id,))
            self._journal.commit(lambda session: filed.store(session, [record], draw.spend_id, draw.cost, query.kind, answer_json, receipt))
        except NotCommitted:
            log.error("a statistics answer was withheld: its audit entry could not be written")
            self._metrics.stats_queries.labels(query.kind, "failed").inc()
            raise CleanroomError(ErrorCode.INTERNAL, "the answer was withheld: its audit entry could not be written; "
                                 "the query's budget is spent") from None
        finally:  # after the record, so it precedes the allowance's close in the journal
            self._allowances.finish(draw, spent=True)
        self._metrics.stats_queries.labels(query.kind, "answered").inc()
        return QueryResult(answer, answer_json, receipt, draw.spend_id)

    def _run_reserved(self, principal: Principal, priced: Priced, privacy_request: str) -> QueryResult:
        """An officer-approved query, or one the policy sends to an officer: its own reservation."""
        dataset, query, cost = priced.dataset, priced.query, priced.cost
        reference = priced.reference
        # The spend counts as decrypted (spent whatever happens) once data is touched for it: before
        # a new worker receives the key, or before a warm worker is asked. With a warm
        # worker that is certain, so the reservation is born decrypted in its own transaction;
        # otherwise it is marked just in time and a worker that never got the key costs nothing.
        born_decrypted = not privacy_request and self._pool.is_warm(dataset.id)
        spend_id = self._reserve(principal, dataset, query, cost, reference, privacy_request, decrypted=born_decrypted)
        opening = (lambda: None) if born_decrypted else (lambda: self._ledger.mark_decrypted(spend_id))
        return self._answer_reserved(spend_id, self._work(priced), opening,
                                     lambda spent: [self._record(principal, priced, "stats.answer", spent, spend_id)],
                                     _Filed(principal.id, (dataset.id,)))

    def _answer_reserved(self, spend_id: str, work: _Work, opening: Callable[[], None],
                         records: Callable[[Privacy], list[audit_repo.Record]], filed: _Filed) -> QueryResult:
        """Answers on a reservation of its own: a failure settles it before the error leaves (spent once
        the data was opened), an answer commits what it spent together with its audit `records`."""
        kind = work.query.kind
        try:
            answer, answer_json, receipt = self._answered(work, opening)
        except Exception as error:  # noqa: BLE001 - whatever failed, the spend is settled before the error leaves
            self._ledger.fail(spend_id, reason=f"query failed: {error_code(error)}")
            self._metrics.stats_queries.labels(kind, "failed").inc()
            raise
        spent = Privacy.cost(answer.epsilon, answer.delta)
        with self._db.transaction() as session:  # the commit, its audit entries and its release, together
            self._ledger.release_in(session, spend_id, spent)
            filed.store(session, records(spent), spend_id, spent, kind, answer_json, receipt)
        self._metrics.stats_queries.labels(kind, "answered").inc()
        return QueryResult(answer, answer_json, receipt, spend_id)

    def _answered(self, work: _Work, opening: Callable[[], None]) -> tuple[Answer, bytes, bytes]:
        """The worker's answer, checked against its price and signed: (answer, its canonical bytes, receipt)."""
        answer, answer_json, nonce = self._answer(work, opening)
        self._gate(answer, work.cost)
        return answer, answer_json, self._sign(work, answer, answer_json, nonce)

    @staticmethod
    def _record(principal: Principal, priced: Priced, action: str, spent: Privacy, spend_id: str, **extra: str) -> audit_repo.Record:
        target = f"{priced.dataset.resource_name}/{priced.reference}"
        details = {"kind": priced.query.kind, "epsilon": spent.epsilon_value, "delta": spent.delta_value, "spend": spend_id,
                   **_view_named(priced.query), **extra}
        return audit_repo.Record(principal.resource_name, action, target, details)

    def held(self, dataset_id: str, manufacturer_id: str) -> Privacy:
        """Budget the caller's open allowance on the dataset holds and has not drawn."""
        return self._allowances.unused(dataset_id, manufacturer_id)

    def settle(self) -> None:
        """Closes open allowances and writes every trailing record (tests; shutdown)."""
        self._allowances.settle()

    def close(self) -> None:
        self._allowances.close()
        self._journal.close()

    def _reserve(self, principal: Principal, dataset: Dataset, query: Query, cost: Privacy, reference: str, privacy_request: str,
                 *, decrypted: bool) -> str:
        if privacy_request:
            return self._approved_spend(principal, privacy_request, reference)
        request = SpendRequest(dataset.id, principal.id, SPEND_KIND, reference, cost, _mechanism(query), stats_workload(dataset.id),
                               decrypted_on_reserve=decrypted, work=work_of(query))
        return self._granted(query, lambda: self._approvals.submit(principal, request))

    def _granted(self, query: Query, submit: Callable[[], PrivacyRequest | GroupRequest]) -> str:
        """The reservation a submitted request got at once (within every policy's auto-approval);
        otherwise the query waits for officers and the caller is told which request to name."""
        try:
            submitted = submit()
        except CleanroomError:
            self._metrics.stats_queries.labels(query.kind, "refused").inc()
            raise
        if submitted.state is not RequestState.APPROVED or submitted.spend_id is None:
            self._metrics.stats_queries.labels(query.kind, "pending").inc()
            raise ApprovalRequired(submitted.resource_name)
        return submitted.spend_id

    def _approved_spend(self, principal: Principal, name: str, reference: str) -> str:
        """The unused reservation an approved request holds for this same query (a cohort's once
        every site's officers approved their part)."""
        request_id = name.removeprefix("privacyRequests/")
        request = self._approvals.get(principal, request_id)
        if request.reference != reference:
            raise CleanroomError(ErrorCode.FAILED_PRECONDITION, "that privacy request was for a different query, dataset or cohort",
                                 violations=[FieldViolation("privacy_request", "must name the request made for this same query")])
        state, spend_id = self._approvals.group_outcome(request_id)
        if state is not RequestState.APPROVED or spend_id is None:
            every = " by every site" if request.group_id else ""
            raise CleanroomError(ErrorCode.FAILED_PRECONDITION, f"that privacy request is {state.value}, not approved{every}")
        return self._unused(spend_id)

    def _answer(self, work: _Work, opening: Callable[[], None]) -> tuple[Answer, bytes, str]:
        try:  # the wrapped keys are read only when a worker has to start
            reply, nonce = self._pool.ask(work.key, work.source, work.workload, query_to_dict(work.query), opening=opening,
                                          stream_readings=work.stream_readings)
        except WorkerFailed as failure:
            log.warning("statistics worker failed", extra={"reason": failure.reason})
            raise CleanroomError(ErrorCode.UNAVAILABLE, "the statistics worker could not answer; the query's budget is refunded "
                                 "unless the data had already been opened for it. Try again later.") from None
        if "answer" not in reply:
            raise worker_error(reply)
        answer = answer_from_dict(reply["answer"])
        return answer, canonical_answer(answer), nonce

    def _work(self, priced: Priced) -> _Work:
        dataset = priced.dataset
        return _Work(dataset.id, lambda: self._source(priced), stats_workload(dataset.id), priced.query, priced.cost,
                     priced.query_sha256, dataset.ciphertext_sha256, dataset.row_count if dataset.is_stream else 0)

    def _source(self, priced: Priced) -> DatasetSource:
        dataset = priced.dataset
        with self._db.read() as session:
            wrapped = dataset_repo.wrapped_dataset_key(session, dataset.id)
        if wrapped is None:
            raise CleanroomError(ErrorCode.NOT_FOUND, NOT_FOUND)
        return DatasetSource(dataset.id, self._blobs.path_of(dataset.id), wrapped, patient_column(dataset), priced.public_keys,
                             stream=stream_settings(dataset))

    @staticmethod
    def _gate(answer: Answer, cost: Privacy) -> None:
        """Fail closed: an answer claiming more than was reserved is never released."""
        spent = Privacy.cost(answer.epsilon, answer.delta)
        if not spent.fits_in(cost):
            raise CleanroomError(ErrorCode.INTERNAL, "the answer was withheld: it did not match its reservation")

    def _sign(self, work: _Work, answer: Answer, answer_json: bytes, nonce: str) -> bytes:
        enclave = self._enclave
        parameters = {"query_sha256": work.query_sha256, "delta": answer.delta,
                      "mechanism": answer.mechanism.name, "rows_per_patient": answer.rows_per_patient,
                      **{k: v for k, v in answer.mechanism.parameters}, **_view_named(work.query)}
        return enclave_sim.sign_report(
            enclave.attestation_key, measurement=enclave.measurement, workload=work.workload,
            dp_parameters=canonical_parameters(parameters), epsilon_spent=answer.epsilon, accountant="basic",
            dataset_commitment=work.commitment, released_files={ANSWER_FILE: answer_json}, nonce=nonce,
        )


@dataclass(frozen=True)
class _Filed:
    """Who asked over which datasets: what an answer's release (its page for officers) is filed under."""

    manufacturer_id: str
    dataset_ids: tuple[str, ...]

    def store(self, session: Session, records: list[audit_repo.Record], spend_id: str, spent: Privacy, kind: str,
              answer_json: bytes, receipt: bytes) -> None:
        """Appends the answer's audit records and stores it as a release naming them, in one transaction."""
        entries = audit_repo.append_many(session, records)
        release_repo.add_answer(session, release_repo.StoredAnswer(
            new_answer_release_id(), self.manufacturer_id, self.dataset_ids, kind, entries[0].target, spend_id, spent,
            answer_json, receipt, tuple(e.seq for e in entries), clock.now()))


def _mechanism(query: Query) -> Mechanism:
    """A query's own mechanism, as its reservation records it (over a stream, with the view it read)."""
    view = f"[{query.stream_view.text()}]" if query.stream_view is not None else ""
    return Mechanism(name=f"stats-{query.kind}{view}", accountant="basic",
                     parameters=(("epsilon", query.epsilon), ("delta", query.delta)))


def work_of(query: Query) -> WorkSummary:
    """The query in an officer's words, and the columns it reads (the manufacturer's own request:
    its filter values are the manufacturer's, never read from the data)."""
    words = [str(query.kind) + (f" of {query.column}" if query.column else "")]
    if query.bounds is not None:
        words.append(f"clamped to [{query.bounds[0]:g}, {query.bounds[1]:g}]")
    if query.group_by:
        words.append(f"by {query.group_by}")
    if query.filters:
        words.append("where " + " and ".join(f"{f.column} {f.op} {f.value!r}" for f in query.filters))
    if query.stream_view is not None:
        words.append(f"over the stream view {query.stream_view.text()}")
    columns = (query.column, query.group_by, *(f.column for f in query.filters))
    return WorkSummary(" ".join(words), tuple(dict.fromkeys(c for c in columns if c)))


def _view_named(query: Query) -> dict[str, str]:
    """What the audit entry and the receipt add for a query over a stream: the view it read."""
    return {"stream_view": query.stream_view.text()} if query.stream_view is not None else {}

