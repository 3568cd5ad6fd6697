"""Privacy accounting for the trainer and the evaluator: pure functions over Opacus's analyses.

Training is a Poisson-subsampled Gaussian mechanism at the patient level. Its noise is calibrated
with Opacus's PRV accountant and the spent ε is cross-checked with RDP: RDP is a looser but
independent upper bound, so an RDP ε below PRV's means the PRV numerics went wrong and we refuse.
If PRV fails outright we fall back to RDP and say so. GDP is never used: its CLT approximation
under-reports ε for few steps or large sampling rates.

Evaluation releases a handful of (discrete) Gaussian statistics, composed under zCDP (ρ adds) and
converted to (ε, δ) through the RDP curve α·ρ with Opacus's conversion.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

from cleanroom.domain.errors import CleanroomError, ErrorCode, bad_request

ACCOUNTANTS = ("prv", "rdp")  # the only ones we ever report; never "gdp"
RDP_ORDERS = [1 + x / 20 for x in range(1, 100)] + [6 + x / 2 for x in range(0, 60)] + list(range(36, 257, 4))


class AccountingError(CleanroomError):
    """The accountants disagree in an impossible way, or the calibrated ε misses the target."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL, message)


@dataclass(frozen=True)
class Accounting:
    epsilon: float
    delta: float
    accountant: str          # which accountant produced `epsilon`: "prv" or "rdp"
    rdp_epsilon: float       # the cross-check, always computed


def check_delta(*, delta: float, n_patients: int) -> None:
    """δ is the chance of a total failure per patient: it must sit below 1/patients."""
    if not 0 < delta < 1 / max(n_patients, 1):
        raise bad_request(f"delta must be in (0, 1/{n_patients}) for {n_patients} patients")


def _epsilon(accountant: str, *, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    from opacus.accountants import PRVAccountant, RDPAccountant

    acct = PRVAccountant() if accountant == "prv" else RDPAccountant()
    acct.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RDP's "optimal order at the edge" only means a looser bound
        eps = float(acct.get_epsilon(delta=delta))
    if not math.isfinite(eps):
        raise ValueError(f"{accountant} returned a non-finite epsilon")
    return eps


def calibrate_noise(*, target_epsilon: float, target_delta: float, sample_rate: float, steps: int) -> tuple[float, str]:
    """Smallest noise multiplier meeting the target, from PRV (falling back to RDP)."""
    from opacus.accountants.utils import get_noise_multiplier

    for accountant in ACCOUNTANTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                             sample_rate=sample_rate, steps=steps, accountant=accountant)
            return float(sigma), accountant
        except (ValueError, ArithmeticError, RuntimeError):
            continue
    raise bad_request("the privacy budget is too small for these training parameters")


def account(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> Accounting:
    """ε spent by `steps` sampled-Gaussian steps: PRV, cross-checked by RDP (RDP if PRV fails)."""
    rdp = _epsilon("rdp", noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
    try:
        prv = _epsilon("prv", noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
    except (ValueError, ArithmeticError, RuntimeError):
        return Accounting(rdp, delta, "rdp", rdp)
    if rdp < prv:
        raise AccountingError(f"RDP epsilon {rdp:.6g} is below PRV epsilon {prv:.6g}: refusing to trust either")
    return Accounting(prv, delta, "prv", rdp)


def zcdp_epsilon(*, rho: float, delta: float) -> float:
    """(ε, δ) of a ρ-zCDP mechanism via its RDP curve ε(α) = α·ρ and Opacus's conversion."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, _ = get_privacy_spent(orders=RDP_ORDERS, rdp=[a * rho for a in RDP_ORDERS], delta=delta)
    return float(eps)


def calibrate_rho(*, target_epsilon: float, delta: float) -> float:
    """Largest ρ (by bisection) whose (ε, δ) stays within the target (a pure function: cached)."""
    return _calibrate_rho(float(target_epsilon), float(delta))


@functools.lru_cache(maxsize=256)
def _calibrate_rho(target_epsilon: float, delta: float) -> float:
    low, high = 0.0, 1.0
    while zcdp_epsilon(rho=high, delta=delta) < target_epsilon:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if zcdp_epsilon(rho=mid, delta=delta) <= target_epsilon else (low, mid)
    return low
