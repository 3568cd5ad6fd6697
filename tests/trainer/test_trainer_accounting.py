"""Accounting: PRV calibration within target, RDP never below PRV, fallbacks, δ refusal, zCDP."""

from __future__ import annotations

import pytest

from cleanroom.domain.errors import CleanroomError
from cleanroom.trainer import accounting, dpsgd


@pytest.mark.parametrize("q,steps,target", [(0.05, 200, 1.0), (0.25, 8, 3.0), (1.0, 1, 8.0)])
def test_prv_epsilon_meets_the_target_and_rdp_is_never_lower(q: float, steps: int, target: float) -> None:
    sigma, used = accounting.calibrate_noise(target_epsilon=target, target_delta=1e-5, sample_rate=q, steps=steps)
    spent = accounting.account(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=1e-5)
    assert used == "prv" and spent.accountant == "prv"
    assert target - 0.05 <= spent.epsilon <= target + 1e-6
    assert spent.rdp_epsilon >= spent.epsilon


def test_rdp_below_prv_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = accounting._epsilon
    monkeypatch.setattr(accounting, "_epsilon", lambda name, **kw: real(name, **kw) * (0.5 if name == "rdp" else 1))
    with pytest.raises(accounting.AccountingError, match="RDP"):
        accounting.account(noise_multiplier=1.0, sample_rate=0.1, steps=100, delta=1e-5)


def test_prv_failure_falls_back_to_rdp_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    real = accounting._epsilon

    def broken(name: str, **kw: float) -> float:
        if name == "prv":
            raise ValueError("PRV domain error")
        return real(name, **kw)

    monkeypatch.setattr(accounting, "_epsilon", broken)
    spent = accounting.account(noise_multiplier=1.0, sample_rate=0.1, steps=100, delta=1e-5)
    assert spent.accountant == "rdp" and spent.epsilon == spent.rdp_epsilon


def test_accountants_are_prv_or_rdp_never_gdp() -> None:
    assert accounting.ACCOUNTANTS == ("prv", "rdp")


@pytest.mark.parametrize("delta", [1 / 1000, 0.01, 0.0, -1e-9])
def test_delta_at_or_above_one_over_patients_is_refused(delta: float) -> None:
    with pytest.raises(CleanroomError, match="delta"):
        accounting.check_delta(delta=delta, n_patients=1000)
    with pytest.raises(CleanroomError, match="delta"):
        dpsgd.plan_steps(n_patients=1000, target_epsilon=1.0, target_delta=delta, epochs=1, expected_batch_patients=10)
    accounting.check_delta(delta=0.999 / 1000, n_patients=1000)


def test_zcdp_calibration_inverts_the_conversion() -> None:
    rho = accounting.calibrate_rho(target_epsilon=1.0, delta=1e-6)
    assert accounting.zcdp_epsilon(rho=rho, delta=1e-6) == pytest.approx(1.0, abs=1e-6)
    # Known bound: rho-zCDP implies (rho + 2 sqrt(rho log(1/delta)), delta)-DP; Opacus's conversion is tighter.
    import math
    assert accounting.zcdp_epsilon(rho=rho, delta=1e-6) <= rho + 2 * math.sqrt(rho * math.log(1e6))
