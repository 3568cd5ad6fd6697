"""A cohort's study table (cleanroom.worker.stats_worker.study_table) and the per-person bound across
sites: with linkage a person's rows at every site are bounded together, without it each site's copy
separately. In process, with the engine's noise switched off so every count is exact."""

from __future__ import annotations

import pyarrow as pa
import pytest

from cleanroom.statistics.cohort import UNIT_COLUMN
from cleanroom.statistics.engine import Query, mechanisms, run_query
from cleanroom.statistics.engine.prepared import PreparedTable
from cleanroom.worker.stats_worker import study_table

PATIENTS = 30


@pytest.fixture
def no_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every additive release returns its input unchanged (as in test_stats_bounding)."""
    monkeypatch.setattr(mechanisms, "release", lambda values, noise: [int(v) for v in values])


def _site(index: int, *, radius: str, linked: bool, heavy_rows: int = 0) -> tuple[pa.Table, dict[str, object]]:
    """One hospital: PATIENTS patients with one row each (patient pseudonyms repeat across sites on
    purpose: the same text at two sites is two people), plus a heavy person with `heavy_rows` rows
    whose linkage pseudonym is the same at every site."""
    patients = [f"p{i}" for i in range(PATIENTS)] + ["heavy"] * heavy_rows
    links = [f"L-{index}-{i}" for i in range(PATIENTS)] + ["L-heavy"] * heavy_rows
    links[0] = ""  # a row without a linkage identifier stays unlinked
    table = pa.table({"pid": patients, "link": links, radius: [10.0 + index] * len(patients),
                      "sex": ["F", "M"] * (len(patients) // 2) + ["F"] * (len(patients) % 2)})
    site = {"dataset_id": f"d{index}", "patient_column": "pid", "linkage_column": "link" if linked else None,
            "columns": {"radius": radius, "sex": "sex"}}
    return table, site


def _prepared(*sites: tuple[pa.Table, dict[str, object]]) -> PreparedTable:
    tables, settings = zip(*sites)
    return PreparedTable(study_table(list(tables), list(settings), UNIT_COLUMN), patient_column=UNIT_COLUMN)


def _count(prepared: PreparedTable, rows: int = 1) -> float:
    query = Query(kind="count", epsilon=1.0, max_rows_per_patient=rows)
    return run_query(prepared, query, patient_column=UNIT_COLUMN).cells[0].value


def test_the_study_table_renames_each_sites_columns_and_keys_rows_by_person() -> None:
    first, second = _site(0, radius="radius", linked=True), _site(1, radius="mean_radius", linked=False)
    table = study_table([first[0], second[0]], [first[1], second[1]], UNIT_COLUMN)
    assert table.column_names == ["radius", "sex", UNIT_COLUMN]  # no patient key, no linkage pseudonym
    assert table.num_rows == 2 * PATIENTS
    assert table.column("radius").to_pylist() == [10.0] * PATIENTS + [11.0] * PATIENTS
    units = table.column(UNIT_COLUMN).to_pylist()
    assert units[:2] == ["S0:p0", "L:L-0-1"]            # linked site: the pseudonym; an empty one stays the site's patient
    assert units[PATIENTS:PATIENTS + 2] == ["S1:p0", "S1:p1"]  # unlinked site: its own patients, qualified by the site


@pytest.mark.usefixtures("no_noise")
@pytest.mark.parametrize("bound", [1, 3])
def test_with_linkage_a_person_at_every_site_moves_a_count_by_at_most_the_bound(bound: int) -> None:
    base = _count(_prepared(*(_site(i, radius="radius", linked=True) for i in range(3))), bound)
    heavy = _count(_prepared(*(_site(i, radius="radius", linked=True, heavy_rows=5) for i in range(3))), bound)
    assert base == 3 * PATIENTS
    assert heavy - base == bound  # 15 rows at three hospitals: one person, bounded once


@pytest.mark.usefixtures("no_noise")
def test_without_linkage_each_sites_copy_of_a_person_is_bounded_separately() -> None:
    base = _count(_prepared(*(_site(i, radius="radius", linked=False) for i in range(3))), 2)
    heavy = _count(_prepared(*(_site(i, radius="radius", linked=False, heavy_rows=5) for i in range(3))), 2)
    assert heavy - base == 3 * 2  # three distinct privacy units, each at most 2 rows


@pytest.mark.usefixtures("no_noise")
def test_linkage_joins_only_the_sites_that_declared_it() -> None:
    sites = [_site(0, radius="radius", linked=True, heavy_rows=5), _site(1, radius="r", linked=True, heavy_rows=5),
             _site(2, radius="radius", linked=False, heavy_rows=5)]
    base = _count(_prepared(*(_site(i, radius="radius", linked=i < 2) for i in range(3))))
    assert _count(_prepared(*sites)) - base == 2  # one unit across the two linked sites, one at the third


@pytest.mark.usefixtures("no_noise")
def test_a_mean_over_the_cohort_reads_every_sites_mapped_column() -> None:
    prepared = _prepared(_site(0, radius="radius", linked=False), _site(1, radius="mean_radius", linked=False),
                         _site(2, radius="rad", linked=False))
    query = Query(kind="sum", column="radius", bounds=(0.0, 40.0), epsilon=1.0)
    total = run_query(prepared, query, patient_column=UNIT_COLUMN).cells[0].value
    assert total == pytest.approx(PATIENTS * (10.0 + 11.0 + 12.0), abs=1e-3)
