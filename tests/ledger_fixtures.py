"""Shared set-up for ledger tests: a dataset, an officer and manufacturers in a migrated database."""

from __future__ import annotations

from dataclasses import dataclass

from cleanroom.domain import deid
from cleanroom.domain.datasets import Dataset, IntakeReport
from cleanroom.domain.identity import Principal, Role, hash_token
from cleanroom.domain.privacy import Privacy
from cleanroom.privacy.approvals import ApprovalService
from cleanroom.privacy.budgets import BudgetService
from cleanroom.privacy.ledger import Ledger, SpendRequest
from cleanroom.storage import clock, dataset_repo, principal_repo
from cleanroom.storage.db import Database


@dataclass
class World:
    db: Database
    ledger: Ledger
    budgets: BudgetService
    approvals: ApprovalService
    officer: Principal
    makers: list[Principal]
    dataset_id: str

    def spend(self, cost: Privacy, maker: int = 0) -> SpendRequest:
        return SpendRequest(self.dataset_id, self.makers[maker].id, "training", "jobs/test", cost)


def build_world(db: Database, *, makers: int = 2, patients: int = 1000) -> World:
    officer = Principal("officer", "Officer", Role.PRIVACY_OFFICER, clock.now())
    owner = Principal("owner", "Hospital", Role.DATA_OWNER, clock.now())
    manufacturers = [Principal(f"maker{i}", f"Maker {i}", Role.MANUFACTURER, clock.now()) for i in range(makers)]
    columns = (deid.ColumnSpec("pid", deid.ColumnType.STRING, deid.ColumnRole.PATIENT_KEY),)
    dataset = Dataset("dset", owner.id, "d", "", columns, 5, patients, patients, IntakeReport(), "0" * 64, clock.now())
    with db.transaction() as session:
        for principal in (officer, owner, *manufacturers):
            principal_repo.add_principal(session, principal, hash_token(principal.id))
        session.flush()
        dataset_repo.add_dataset(session, dataset, b"key")
    ledger = Ledger(db)
    return World(db, ledger, BudgetService(db), ApprovalService(db, ledger), officer, manufacturers, dataset.id)
