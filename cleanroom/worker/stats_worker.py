"""`python3 -m cleanroom.worker.stats_worker`: the warm statistics worker, inside its sandbox.

Service code only (cleanroom.statistics.engine; no manufacturer code ever runs here). The first frame on
stdin carries the secrets (the dataset key wrapped to this run's ephemeral key by the key broker,
that key, the quote) and the dataset's public settings, or the same per site of a cohort (read as
one table: see study_table); the worker decrypts the data in memory,
prepares it once, answers "ready", then answers one query per frame until stdin closes or the host
kills it. A stream dataset is only opened (its index): each query's stream view is derived from it
patient by patient (cleanroom/worker/stream_views.py), so memory follows one patient, not the
stream. Answers are DP outputs only. An error is a code and a message written by service code
(validation names fields, never values); anything unexpected is reported as "internal" and nothing
of it leaves. The real stdout is kept for frames; anything printed goes to stderr, which the host
drops.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cleanroom.statistics.engine.prepared import PreparedTable
    from cleanroom.statistics.engine.query import Query
    from cleanroom.worker.stream_views import StreamViews

IN = Path("/in/job")


def main(inputs: Path = IN) -> int:
    frames_out = os.dup(1)
    os.dup2(2, 1)  # a stray print must never be taken for an answer
    from cleanroom.sandbox.session import read_frame, write_frame

    hello = read_frame(0)
    if hello is None:
        return 1
    settings = json.loads(hello)
    prepared = _load_cohort(inputs, settings) if "sites" in settings else _load(inputs / "dataset.blob", settings)
    write_frame(frames_out, json.dumps({"ready": True}).encode())
    queries = _Queries()
    while (frame := read_frame(0)) is not None:
        write_frame(frames_out, json.dumps(_answer(prepared, settings, queries, frame)).encode())
    return 0


class _Queries:
    """Requests already parsed: a dashboard asks the same few queries over and over."""

    LIMIT = 1024

    def __init__(self) -> None:
        self._parsed: dict[bytes, Query] = {}

    def parse(self, frame: bytes) -> Query:
        from cleanroom.statistics.engine.codec import query_from_dict

        query = self._parsed.get(frame)
        if query is None:
            query = query_from_dict(json.loads(frame)["query"])
            if len(self._parsed) >= self.LIMIT:
                self._parsed.clear()
            self._parsed[frame] = query
        return query


def _load(path: Path, settings: dict[str, Any]) -> PreparedTable | StreamViews:
    """A table decrypted and prepared whole; a stream only opened (its index), its views derived per query."""
    from cleanroom.statistics.engine.prepared import PreparedTable
    from cleanroom.worker.phase_b import _decrypt_dataset

    if settings.get("stream") is not None:
        from cleanroom.worker.stream_views import open_stream

        return open_stream(path, settings["secrets"], settings["dataset_id"], settings)

    table = _decrypt_dataset(path, settings["secrets"], settings["dataset_id"])
    return PreparedTable(table, patient_column=settings["patient_column"])


def _load_cohort(inputs: Path, settings: dict[str, Any]) -> PreparedTable:
    """Every site decrypted, its mapped columns renamed to study names, the sites' rows one after
    another, each with its privacy unit; the worker then answers on the unit column."""
    from cleanroom.statistics.engine.prepared import PreparedTable
    from cleanroom.worker.phase_b import _decrypt_dataset

    tables = [_decrypt_dataset(inputs / site["blob"], site["secrets"], site["dataset_id"]) for site in settings["sites"]]
    unit = settings["patient_column"]  # the service names the unit column: a name no stored column has
    return PreparedTable(study_table(tables, settings["sites"], unit), patient_column=unit)


def study_table(tables: list[Any], sites: list[dict[str, Any]], unit_column: str) -> Any:
    """The cohort as one Arrow table: per site, its study columns under their study names (cast to
    the first site's type, which validation found equal in kind) and the unit column
    (cleanroom.domain.cohort.unit_key: the linkage pseudonym where the site declared linkage, else
    the patient pseudonym qualified by the site), so a per-person row bound holds across sites."""
    import pyarrow as pa

    from cleanroom.worker.units import unit_column as units_of

    names = sorted(sites[0]["columns"])
    parts: list[Any] = []
    for index, (table, site) in enumerate(zip(tables, sites, strict=True)):
        links = table.column(site["linkage_column"]) if site.get("linkage_column") else None
        units = units_of(index, table.column(site["patient_column"]), links)
        columns = {name: table.column(site["columns"][name]) for name in names}
        if parts:
            columns = {name: column.cast(parts[0].schema.field(name).type) for name, column in columns.items()}
        parts.append(pa.table({**columns, unit_column: units}))
    return pa.concat_tables(parts)


def _answer(prepared: PreparedTable | StreamViews, settings: dict[str, Any], queries: _Queries, frame: bytes) -> dict[str, Any]:
    from cleanroom.domain.errors import CleanroomError
    from cleanroom.statistics.engine import run_query
    from cleanroom.statistics.engine.codec import answer_to_dict
    from cleanroom.statistics.engine.prepared import PreparedTable

    try:
        query = queries.parse(frame)
        table = prepared if isinstance(prepared, PreparedTable) else prepared.prepared(query)
        answer = run_query(table, query, patient_column=settings["patient_column"],
                           public_group_keys=settings.get("public_group_keys") or None)
    except CleanroomError as error:
        return {"error": error.code.value, "message": error.message,
                "violations": [[v.field, v.description] for v in error.violations]}
    except Exception:  # noqa: BLE001 - its text could quote data; only the fact leaves
        return {"error": "internal"}
    return {"answer": answer_to_dict(answer)}


if __name__ == "__main__":
    sys.exit(main())
