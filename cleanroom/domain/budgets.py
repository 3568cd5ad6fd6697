"""What a caller sees of privacy budgets (pure): the lines of a dataset's budgets, the officer's view
of one dataset, the dry run of a request against them, a share's state, and what would remain once
every pending request were approved."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace

from cleanroom.domain.approvals import ApprovalPolicy, Decision, PolicyCheck, PrivacyRequest
from cleanroom.domain.cost_reasons import CostReason
from cleanroom.domain.datasets import Dataset
from cleanroom.domain.errors import CleanroomError, ErrorCode, FieldViolation, bad_request
from cleanroom.domain.identity import Principal
from cleanroom.domain.privacy import Balance, EventKind, LedgerEvent, Privacy, apply_event, dataset_budget_id, share_budget_id


class ShareState(enum.Enum):
    """A dataset x manufacturer share. Paused: no new reservations (work already reserved runs on),
    resumable. Withdrawn: final; the manufacturer no longer sees the dataset."""

    ACTIVE = "active"
    PAUSED = "paused"
    WITHDRAWN = "withdrawn"

    @classmethod
    def parse(cls, text: str) -> ShareState:
        try:
            return cls(text)
        except ValueError:
            raise bad_request("unknown share state", FieldViolation("state", "active, paused or withdrawn")) from None


def check_share_transition(current: ShareState, new: ShareState) -> None:
    """A withdrawn share stays withdrawn: the hospital took the dataset back for good."""
    if current is ShareState.WITHDRAWN and new is not ShareState.WITHDRAWN:
        raise CleanroomError(ErrorCode.FAILED_PRECONDITION, "this share was withdrawn, which is final",
                             violations=[FieldViolation("state", "a withdrawn share cannot be resumed or paused")])


class ShareNotActive(CleanroomError):
    """A reservation (or a request that would need one) against a paused or withdrawn share.
    Refused before any budget moves, so it costs nothing."""

    def __init__(self, dataset_id: str, state: ShareState) -> None:
        detail = ("paused by the hospital or its privacy officers: no new work until it is resumed"
                  if state is ShareState.PAUSED else "withdrawn by the hospital or its privacy officers, for good")
        super().__init__(ErrorCode.FAILED_PRECONDITION, f"the share of datasets/{dataset_id} with this manufacturer is {detail}",
                         violations=[FieldViolation(f"datasets/{dataset_id}", f"share {state.value}")])
        self.state = state


@dataclass(frozen=True)
class BudgetLine:
    budget_id: str
    manufacturer: Principal | None  # None: the dataset-wide budget
    balance: Balance
    basic_epsilon: float = 0.0
    rdp_epsilon: float | None = None  # None: some committed spend cannot be composed under RDP
    share_state: ShareState | None = None  # None: the dataset-wide budget
    share_state_reason: str = ""


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


@dataclass(frozen=True)
class PendingComposition:
    """One dataset's budgets now and once every listed pending request were approved."""

    dataset_id: str
    before: tuple[BudgetLine, ...]
    after: tuple[BudgetLine, ...]
    included: tuple[str, ...]      # request ids counted, in order
    not_fitting: tuple[str, ...]   # request ids whose approval would be refused by then


def compose_pending(dataset_id: str, lines: tuple[BudgetLine, ...], pending: Sequence[PrivacyRequest]) -> PendingComposition:
    """Approves `pending` (this dataset's rows) one after another on paper, as the ledger would:
    each approval is a RESERVE on the dataset-wide and the share budget (privacy.apply_event), refused
    unless both exist, both admit it and the share is active. A refused one changes nothing."""
    balances = {line.budget_id: line.balance for line in lines}
    states = {line.budget_id: line.share_state for line in lines}
    included: list[str] = []
    refused: list[str] = []
    for request in pending:
        budgets = (dataset_budget_id(dataset_id), share_budget_id(dataset_id, request.manufacturer_id))
        fits = all(b in balances and balances[b].admits(request.cost) for b in budgets) \
            and states.get(budgets[1]) is ShareState.ACTIVE
        if not fits:
            refused.append(request.id)
            continue
        reserve = LedgerEvent(EventKind.RESERVE, budgets, request.cost, "", request.created_at)
        balances = apply_event(balances, reserve)
        included.append(request.id)
    after = tuple(replace(line, balance=balances[line.budget_id]) for line in lines)
    return PendingComposition(dataset_id, lines, after, tuple(included), tuple(refused))
