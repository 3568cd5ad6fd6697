"""The audit proof at its fast size (the canaries in one Gaussian-mechanism release): healthy bounds
below their claims, the noiseless release caught, and a section that fails when a healthy bound
exceeds its claim."""

from __future__ import annotations

from pathlib import Path

from proof import audit


def test_the_fast_audit_section_catches_the_noiseless_release(tmp_path: Path, monkeypatch) -> None:
    """The healthy rows, statistically: by the audit's theorem each run exceeds its claim with
    probability at most 0.05, so at most 3 of a row's 5 may: P[Binomial(5, 0.05) >= 4] < 3.1e-5, under
    1e-4 for the three rows together (measured at ε = 1: mean bound 0.2, largest 0.81 in 150 runs)."""
    rows: list[audit.Row] = []
    monkeypatch.setattr(audit, "_markdown", lambda made: (rows.extend(made), "")[1])
    section = audit.run(full=False, out=tmp_path)
    assert (tmp_path / "audit.png").stat().st_size > 1000
    assert [r.claimed for r in rows] == [1.0, 3.0, 8.0, 0.5] and [r.healthy for r in rows] == [True, True, True, False]
    assert all(len(r.audits) == 5 for r in rows)
    assert all(r.exceeded <= 3 for r in rows[:3]), [[a.epsilon_lower_bound for a in r.audits] for r in rows]
    assert rows[3].passed and all(a.epsilon_lower_bound > 4 for a in rows[3].audits)  # σ = 0: every guess right
    assert section.passed == all(r.passed for r in rows)


def test_the_section_reads_as_markdown(tmp_path: Path) -> None:
    rows = [audit.Row("Gaussian", 1.0, [audit.gaussian_audit(1.0, noise=False)], False)]
    table = audit._markdown(rows)
    assert table.splitlines()[2].startswith("| Gaussian | 1 | 1024 | ") and table.endswith("refuses (caught) |")


def test_a_healthy_bound_above_its_claim_fails_the_section() -> None:
    leaky = audit.gaussian_audit(1.0, noise=False)  # every guess right: far above ε = 1
    assert not audit.Row("healthy?", 1.0, [leaky], True).passed
    assert audit.Row("broken", 1.0, [leaky], False).passed
