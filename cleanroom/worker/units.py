"""The privacy unit of every row of one site, as an Arrow column: domain.cohort.unit_key applied
column-wise (a row-by-row Python loop would dominate a cohort's load time at millions of rows).
The statistics worker uses it; phase B keeps unit_key per row, because pyarrow.compute loads
dateutil, which phase B's module tripwire (trainer/guard.py) does not allow."""

from __future__ import annotations

from typing import Any


def unit_column(site_index: int, patients: Any, links: Any | None) -> Any:
    """`patients` and `links` (None: the site declared no linkage): Arrow arrays of one site's stored
    pseudonyms. Each row gets "L:" + its linkage pseudonym where it has one, else "S{index}:" + its
    patient pseudonym; a row without a patient gets null. Equal to unit_key row by row (tested)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    patients = pc.cast(patients, pa.string())
    own = pc.binary_join_element_wise(pa.scalar(f"S{site_index}:"), patients, "")
    if links is None:
        return own
    links = pc.cast(links, pa.string())
    linked = pc.fill_null(pc.not_equal(links, ""), False)
    return pc.if_else(pc.and_(linked, pc.is_valid(patients)), pc.binary_join_element_wise(pa.scalar("L:"), links, ""), own)
