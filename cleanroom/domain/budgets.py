"""What a caller sees of privacy budgets (pure): the lines of a dataset's budgets, the officer's view
of one dataset, and the dry run of a request against them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cleanroom.domain.approvals import ApprovalPolicy, Decision, PolicyCheck
from cleanroom.domain.cost_reasons import CostReason
from cleanroom.domain.datasets import Dataset
from cleanroom.domain.identity import Principal
from cleanroom.domain.privacy import Balance, Privacy


@dataclass(frozen=True)
class BudgetLine:
    budget_id: str
    manufacturer: Principal | None  # None: the dataset-wide budget
    balance: Balance
    basic_epsilon: float = 0.0
    rdp_epsilon: float | None = None  # None: some committed spend cannot be composed under RDP


@dataclass(frozen=True)
class BudgetView:
    dataset: Dataset
    lines: tuple[BudgetLine, ...]
    policy: ApprovalPolicy
    dataset_cap_set: bool = True  # False: no dataset-wide cap yet, so nothing can be spent


@dataclass(frozen=True)
class Estimate:
    cost: Privacy
    check: PolicyCheck
    balances: tuple[BudgetLine, ...]   # the budgets the caller may see, now, as GetBudgets shows them
    fits: bool
    budget_reasons: tuple[CostReason, ...] = ()  # the budgets that would refuse, and what would make it fit
    notes: tuple[str, ...] = ()  # what else the policy does to a training job, and its cost (the privacy audit)

    @property
    def reasons(self) -> tuple[CostReason, ...]:
        """Every rule that refuses or makes the request wait: budgets first, then the policy."""
        return self.budget_reasons + self.check.details

    @property
    def decision(self) -> Decision:
        """What submitting it now would do: within auto-approval but beyond a budget it is refused
        (PRIVACY_BUDGET_EXHAUSTED), never approved; one that waits for an officer still waits."""
        if self.check.decision is Decision.AUTO_APPROVE and not self.fits:
            return Decision.REFUSED
        return self.check.decision

    def balances_after(self) -> tuple[BudgetLine, ...]:
        """The same budgets once the request is reserved; none when it cannot be (nothing would change)."""
        if not self.fits or self.decision is Decision.REFUSED:
            return ()
        return tuple(replace(line, balance=Balance(line.balance.cap, line.balance.reserved + self.cost, line.balance.spent))
                     for line in self.balances)
