"""Basic versus RDP composition of a budget's committed history, for the officer's view.

The ledger charges basic composition (ε and δ add): sound, simple, and what caps are checked
against. Because every spend records its mechanism, the same history can also be composed under
Rényi DP, which is usually much tighter for many Gaussian spends; the officer sees both numbers
side by side. Pure ε-DP spends enter RDP through ε-DP ⇒ (α, min(ε, αε²/2))-RDP.
"""

from __future__ import annotations

from cleanroom.domain.privacy import EventKind, LedgerEvent, Mechanism

ORDERS = [1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 128, 256]


def basic_epsilon(commits: list[LedgerEvent]) -> float:
    return sum(e.amount.epsilon for e in commits if e.kind is EventKind.COMMIT) / 10**6


def _rdp_curve(mechanism: Mechanism, epsilon: float) -> list[float] | None:
    from opacus.accountants.analysis import rdp as opacus_rdp  # heavy import, only when asked

    if mechanism.name == "subsampled-gaussian":
        sigma, q, steps = (mechanism.parameter(k) for k in ("noise_multiplier", "sample_rate", "steps"))
        if sigma is None or q is None or steps is None:
            return None
        return list(opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=int(steps), orders=ORDERS))
    if mechanism.name == "gaussian":
        sigma, count = mechanism.parameter("noise_multiplier"), mechanism.parameter("count") or 1
        return None if sigma is None else [count * a / (2 * sigma**2) for a in ORDERS]
    if mechanism.name in ("laplace", "discrete-laplace", "pure"):
        return [min(epsilon, a * epsilon**2 / 2) for a in ORDERS]
    return None


def rdp_epsilon(commits: list[LedgerEvent], delta: float) -> float | None:
    """None when some committed spend lacks a mechanism RDP can compose."""
    total = [0.0] * len(ORDERS)
    spends = [e for e in commits if e.kind is EventKind.COMMIT]
    if not spends or not 0 < delta < 1:
        return None
    for event in spends:
        curve = _rdp_curve(event.mechanism, event.amount.epsilon / 10**6) if event.mechanism else None
        if curve is None:
            return None
        total = [t + c for t, c in zip(total, curve)]
    from opacus.accountants.analysis import rdp as opacus_rdp

    epsilon, _order = opacus_rdp.get_privacy_spent(orders=ORDERS, rdp=total, delta=delta)
    return float(epsilon)
