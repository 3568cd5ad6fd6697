"""The pure rules behind budget answers: exact numbers, the cap that would fit, the policy's verdicts."""

from __future__ import annotations

from cleanroom.domain.approvals import ApprovalPolicy, Decision, check_against_policy
from cleanroom.domain.cost_reasons import Outcome, Rule, budget_reason, delta_text, epsilon_text, policy_reasons
from cleanroom.domain.privacy import Balance, Privacy

SHARE = "datasets/d1/manufacturers/m1"


def test_the_cap_that_would_fit_is_exact_and_names_only_what_must_grow() -> None:
    balance = Balance(Privacy.cap(1.000001, 1e-5), spent=Privacy.cost(0.9, 1e-7))
    reason = budget_reason(Rule.SHARE_BUDGET, SHARE, balance, Privacy.cost(0.2, 1e-7))
    assert reason.fits_with == Privacy(1_100_000, 10**13) and reason.left == Privacy(100_001, 10**13 - 10**11)
    assert "raise that cap to at least ε 1.1, or request at most ε 0.100001, δ 9.9e-6" in reason.remedy
    assert budget_reason(Rule.SHARE_BUDGET, SHARE, balance, Privacy.cost(0.1, 1e-7)) is None  # it fits


def test_a_missing_cap_points_at_the_command_that_sets_it() -> None:
    reason = budget_reason(Rule.SHARE_BUDGET, SHARE, None, Privacy.cost(1, 0))
    assert not reason.cap_set and reason.outcome is Outcome.REFUSED
    assert "cleanroom privacy budget datasets/d1 --manufacturer principals/m1" in reason.remedy


def test_numbers_print_exactly() -> None:
    assert [epsilon_text(e) for e in (1, 10_600_000, 123_456_789)] == ["1e-6", "10.6", "123.456789"]
    assert [delta_text(d) for d in (10**12, 11 * 10**12, 25 * 10**14, 0)] == ["1e-6", "1.1e-5", "0.0025", "0"]


def test_delta_above_the_default_limit_cannot_be_raised_only_lowered() -> None:
    (reason,) = policy_reasons(ApprovalPolicy(), Privacy.cost(1, 0.01), patients=40)
    assert reason.rule is Rule.APPROVAL_POLICY and reason.fits_with is None
    assert reason.remedy == "request at most δ 0.0025 (1 / (10 × 40 patients); δ must stay well below 1 / patients)"


def test_policy_decisions_keep_their_meaning() -> None:
    policy = ApprovalPolicy(max_epsilon=3_000_000, auto_approve_epsilon=1_000_000)
    assert check_against_policy(policy, Privacy.cost(1, 0), 100).decision is Decision.AUTO_APPROVE
    waits = check_against_policy(policy, Privacy.cost(2, 0), 100)
    assert waits.decision is Decision.NEEDS_APPROVAL and [d.rule for d in waits.details] == [Rule.AUTO_APPROVAL]
    refused = check_against_policy(policy, Privacy.cost(4, 0), 100)
    assert refused.decision is Decision.REFUSED and [d.rule for d in refused.details] == [Rule.APPROVAL_POLICY]
    assert refused.reasons == (refused.details[0].sentence,)
