"""Phase B's privacy units across sites, counted in the trainer's own sampled batches.

Three hospitals, with persons planted at all three (several rows each). With linkage a person is
one unit: in any step of DP-SGD's patient-level sampling (dpsgd.sample_batch, the trainer's own
code), their rows from all sites together number at most the per-patient bound. Without linkage
each site's copy is its own unit, bounded separately: the same person can appear up to three
times the bound in one step, and does.
"""

from __future__ import annotations

import numpy as np
import pytest

from cleanroom.trainer import dpsgd, sampling
from cleanroom.worker import phase_b
from tests.worker import cohort_data as data

BOUND = 2
STEPS = 400
ROWS_PER_SHARED = 4   # per site: a planted person has 12 rows in all, 6x the bound


def _examples(linked: tuple[bool, ...]) -> dict:
    tables = [data.site_table(s, patients=60, shared=3, rows_per_shared=ROWS_PER_SHARED) for s in range(3)]
    examples = phase_b._examples(tables, data.job("training", linked=linked))
    assert examples is not None
    return examples


def _planted_rows(examples: dict, person: int) -> np.ndarray:
    """Rows that belong to planted person `person` at any site (from the local pseudonyms the
    test planted, independent of how phase B named the units)."""
    site_pid = {f"h{s}-shared{person}" for s in range(3)}
    tables = [data.site_table(s, patients=60, shared=3, rows_per_shared=ROWS_PER_SHARED) for s in range(3)]
    pids = np.concatenate([np.asarray(t.column("pid").to_pylist(), dtype=object) for t in tables])
    return np.asarray([p in site_pid for p in pids])


def _counts_per_step(examples: dict, person: int, *, sample_rate: float = 0.5, seed: int = 3) -> np.ndarray:
    """[steps, sites]: the planted person's rows in each sampled batch, by site."""
    index = sampling.PatientIndex.build(examples["patient"])
    rng = np.random.default_rng(seed)
    planted = _planted_rows(examples, person)
    counts = np.zeros((STEPS, 3), dtype=np.int64)
    for step in range(STEPS):
        batch = dpsgd.sample_batch(index, rng, sample_rate=sample_rate, max_rows=BOUND)
        rows = batch.rows[planted[batch.rows]]
        counts[step] = np.bincount(examples["site"][rows], minlength=3)
    return counts


@pytest.mark.parametrize("person", [0, 1, 2])
def test_a_linked_person_is_bounded_across_sites_in_every_step(person) -> None:
    examples = _examples((True, True, True))
    assert len({u for u, p in zip(examples["patient"], _planted_rows(examples, person)) if p}) == 1
    counts = _counts_per_step(examples, person).sum(axis=1)
    assert counts.max() == BOUND        # never more than the bound, and the bound is reached
    assert (counts > 0).mean() == pytest.approx(0.5, abs=0.1)   # the person is sampled once per step, at rate q


def test_without_linkage_each_sites_copy_is_bounded_separately() -> None:
    examples = _examples((False, False, False))
    counts = _counts_per_step(examples, 0)
    assert counts.max(axis=0).tolist() == [BOUND] * 3   # each site's copy: at most the bound
    assert counts.sum(axis=1).max() == 3 * BOUND        # the person as a whole: up to three times it


def test_linkage_at_two_sites_only_links_those_two() -> None:
    examples = _examples((True, True, False))
    counts = _counts_per_step(examples, 0)
    assert (counts[:, 0] + counts[:, 1]).max() == BOUND
    assert counts[:, 2].max() == BOUND
    assert counts.sum(axis=1).max() == 2 * BOUND


def test_a_patient_with_two_linkage_values_is_never_split() -> None:
    """A site's patient whose rows carry two linkage pseudonyms (a data error) joins both: all
    their rows, and the other sites' rows of both pseudonyms, are one unit."""
    tables = [data.site_table(s, patients=20, shared=2, rows_per_shared=2) for s in range(3)]
    links = tables[0].column("rrn_link").to_pylist()
    pids = tables[0].column("pid").to_pylist()
    first = pids.index("h0-shared0")
    links[first] = "link-P1"          # one of h0-shared0's rows carries P1's pseudonym
    tables[0] = tables[0].set_column(tables[0].schema.get_field_index("rrn_link"), "rrn_link", [links])
    examples = phase_b._examples(tables, data.job("training"))
    assert examples is not None
    all_pids = np.concatenate([np.asarray(t.column("pid").to_pylist(), dtype=object) for t in tables])
    planted = np.asarray([p.endswith(("shared0", "shared1")) for p in all_pids])
    assert set(examples["patient"][planted]) == {"L:link-P0"}
    assert "L:link-P0" not in set(examples["patient"][~planted])


def test_units_follow_the_domain_rule() -> None:
    """Linked rows are named by their linkage pseudonym, unlinked ones by site and patient."""
    examples = _examples((True, False, True))
    units = set(examples["patient"])
    assert "L:link-P0" in units and "S1:h1-shared0" in units and "S0:h0-shared0" not in units
    assert examples["site"].tolist() == sorted(examples["site"].tolist())
