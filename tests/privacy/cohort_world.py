"""Shared set-up for cohort approval tests: three hospitals (each an organisation with its own
officer and dataset), the platform operator's officer and one manufacturer, in a migrated database."""

from __future__ import annotations

from dataclasses import dataclass

from cleanroom.domain import deid
from cleanroom.domain.approvals import ApprovalPolicy
from cleanroom.domain.datasets import Dataset, IntakeReport
from cleanroom.domain.identity import Principal, Role, hash_token
from cleanroom.domain.organisations import OPERATOR_ID
from cleanroom.domain.privacy import EPSILON_SCALE, Balance, LedgerEvent, Privacy, replay
from cleanroom.privacy.approvals import ApprovalService
from cleanroom.privacy.budgets import BudgetService
from cleanroom.privacy.ledger import Ledger, SpendRequest
from cleanroom.storage import clock, dataset_repo, principal_repo, privacy_repo
from cleanroom.storage.db import Database

HOSPITALS = ("north", "south", "east")


@dataclass
class Cohort:
    db: Database
    ledger: Ledger
    approvals: ApprovalService
    budgets: BudgetService
    operator: Principal
    officers: list[Principal]  # one per hospital, in its organisation
    maker: Principal
    dataset_ids: list[str]  # one per hospital

    def request(self, eps: float, sites: tuple[int, ...] = (0, 1, 2), reference: str = "jobs/c") -> SpendRequest:
        ids = [self.dataset_ids[i] for i in sites]
        return SpendRequest(ids[0], self.maker.id, "training", reference, Privacy.cost(eps, 1e-7), cohort=tuple(ids[1:]))

    def set_caps(self, *, dataset: tuple[float, ...], share: tuple[float, ...]) -> None:
        for dataset_id, whole, part in zip(self.dataset_ids, dataset, share, strict=True):
            self.budgets.set_cap(self.operator, dataset_id, None, Privacy.cap(whole, 1e-5), "cohort test")
            self.budgets.set_cap(self.operator, dataset_id, self.maker.id, Privacy.cap(part, 1e-5), "cohort test")

    def set_auto_approve(self, site: int, eps: float) -> None:
        policy = ApprovalPolicy(auto_approve_epsilon=round(eps * EPSILON_SCALE))
        self.budgets.set_policy(self.operator, self.dataset_ids[site], policy, "cohort test")

    def state(self) -> tuple[dict[str, Balance], list[LedgerEvent]]:
        with self.db.read() as session:
            return privacy_repo.all_balances(session), privacy_repo.events(session)

    def check_ledger(self) -> dict[str, Balance]:
        """No budget overspent, and the events alone rebuild every stored balance."""
        balances, events = self.state()
        for budget_id, balance in balances.items():
            assert (balance.reserved + balance.spent).fits_in(balance.cap), budget_id
        assert replay(events) == balances
        return balances


def build_cohort(db: Database, *, patients: int = 1000) -> Cohort:
    operator = Principal("operator-officer", "Operator officer", Role.PRIVACY_OFFICER, clock.now(), OPERATOR_ID)
    officers = [Principal(f"officer-{h}", f"Officer {h}", Role.PRIVACY_OFFICER, clock.now(), f"org-{h}") for h in HOSPITALS]
    owners = [Principal(f"owner-{h}", f"Hospital {h}", Role.DATA_OWNER, clock.now(), f"org-{h}") for h in HOSPITALS]
    maker = Principal("maker", "Maker", Role.MANUFACTURER, clock.now(), "org-maker")
    columns = (deid.ColumnSpec("pid", deid.ColumnType.STRING, deid.ColumnRole.PATIENT_KEY),)
    datasets = [Dataset(f"d-{h}", owner.id, h, "", columns, 5, patients, patients, IntakeReport(), "0" * 64, clock.now(),
                        organisation_id=owner.organisation_id) for h, owner in zip(HOSPITALS, owners, strict=True)]
    with db.transaction() as session:
        for principal in (operator, *officers, *owners, maker):
            principal_repo.add_principal(session, principal, hash_token(principal.id))
        session.flush()
        for dataset in datasets:
            dataset_repo.add_dataset(session, dataset, b"key")
    ledger = Ledger(db)
    budgets = BudgetService(db)
    cohort = Cohort(db, ledger, ApprovalService(db, ledger), budgets, operator, officers, maker, [d.id for d in datasets])
    for dataset_id in cohort.dataset_ids:
        budgets.share(operator, dataset_id, maker.id, Privacy.cap(10, 1e-5), "cohort test")
    return cohort
