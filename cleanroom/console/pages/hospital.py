"""The hospital's view (data owners): its datasets, each one's intake report, who it is shared with
and how much of each share is used; pausing, resuming and withdrawing a share.

Everything comes from the API with the signed-in data owner's token: ListDatasets and GetDataset
answer only the hospital's own datasets (another's is NOT_FOUND, hence a 404 page), GetBudgets its
own shares, and SetShareState decides who may pause or withdraw. A dataset the API shows without
its owner (a manufacturer's view of a shared one: schema only) is not a hospital's and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import Response
from starlette.routing import Route

from cleanroom.console.web import Console, Page, Redirect, page
from cleanroom.v1 import datasets_pb2, privacy_pb2

# What a data owner may ask of a share from the dataset page; withdrawing has its own confirmation.
STATE_ACTIONS = {"paused": "paused: no new reservations until resumed", "active": "resumed"}
WITHDRAWN = "withdrawn"


def routes(console: Console) -> list[Route]:
    return [
        Route("/hospital", page(console, _datasets), methods=["GET"]),
        Route("/hospital/datasets/{dataset_id}", page(console, _dataset), methods=["GET"]),
        Route("/hospital/datasets/{dataset_id}/shares/{manufacturer_id}/state", page(console, _set_state), methods=["POST"]),
        Route("/hospital/datasets/{dataset_id}/shares/{manufacturer_id}/withdraw", page(console, _withdraw_form), methods=["GET"]),
        Route("/hospital/datasets/{dataset_id}/shares/{manufacturer_id}/withdraw", page(console, _withdraw), methods=["POST"]),
    ]


@dataclass(frozen=True)
class Share:
    """One manufacturer's share of a dataset, as the page shows it."""

    manufacturer_id: str
    manufacturer: str
    state: str
    reason: str
    budget: privacy_pb2.Budget

    @property
    def used_percent(self) -> int:
        """Spent plus reserved, as a share of the ε cap (for the gauge; the numbers are shown too)."""
        cap = self.budget.cap.epsilon
        return 0 if cap <= 0 else min(100, round(100 * (self.budget.spent.epsilon + self.budget.reserved.epsilon) / cap))


def _shares(report: privacy_pb2.BudgetReport) -> list[Share]:
    return [Share(b.manufacturer.removeprefix("principals/"), b.manufacturer_display_name or b.manufacturer,
                  b.share_state or "active", b.share_state_reason, b)
            for b in report.budgets if b.manufacturer]


def _dataset_wide(report: privacy_pb2.BudgetReport) -> privacy_pb2.Budget | None:
    return next((b for b in report.budgets if not b.manufacturer), None)


def _datasets(p: Page) -> Response:
    rows = [(dataset, _shares(p.client.get_budgets(dataset.name))) for dataset in p.client.list_datasets() if dataset.owner]
    return p.render("hospital.html", title="Datasets and shares", rows=rows, dataset_id=_dataset_id)


def _dataset(p: Page) -> Response:
    name = f"datasets/{p.path_params['dataset_id']}"
    dataset = p.client.get_dataset(name)
    if not dataset.owner:
        return _absent(p)
    report = p.client.get_budgets(name)
    return p.render("hospital_dataset.html", title=dataset.display_name or dataset.name, dataset=dataset,
                    dataset_id=_dataset_id(dataset), columns=_columns(dataset), intake=_intake_rows(dataset),
                    wide=_dataset_wide(report), shares=_shares(report), cap_set=report.dataset_cap_set)


def _set_state(p: Page) -> Response:
    dataset_id, manufacturer_id = p.path_params["dataset_id"], p.path_params["manufacturer_id"]
    back = f"/hospital/datasets/{dataset_id}"
    state = p.field("state")
    if state not in STATE_ACTIONS:
        raise Redirect(back, error="choose pause or resume; withdrawing has its own confirmation page")
    p.client.set_share_state(f"datasets/{dataset_id}", f"principals/{manufacturer_id}", state, reason=p.field("reason"))
    raise Redirect(back, notice=f"share {STATE_ACTIONS[state]}")


def _withdraw_form(p: Page) -> Response:
    dataset_id, manufacturer_id = p.path_params["dataset_id"], p.path_params["manufacturer_id"]
    name = f"datasets/{dataset_id}"
    dataset = p.client.get_dataset(name)
    share = next((s for s in _shares(p.client.get_budgets(name)) if s.manufacturer_id == manufacturer_id), None)
    if share is None or not dataset.owner:
        return _absent(p)
    return p.render("hospital_withdraw.html", title="Withdraw a share", dataset=dataset, dataset_id=dataset_id, share=share)


def _withdraw(p: Page) -> Response:
    dataset_id, manufacturer_id = p.path_params["dataset_id"], p.path_params["manufacturer_id"]
    form = f"/hospital/datasets/{dataset_id}/shares/{manufacturer_id}/withdraw"
    if p.field("confirm") != "withdraw":
        raise Redirect(form, error="tick the box to confirm that withdrawing cannot be undone")
    p.client.set_share_state(f"datasets/{dataset_id}", f"principals/{manufacturer_id}", WITHDRAWN, reason=p.field("reason"))
    raise Redirect(f"/hospital/datasets/{dataset_id}", notice="share withdrawn: the manufacturer no longer sees this dataset")


def _absent(p: Page) -> Response:
    """The page the API's NOT_FOUND becomes (web.py), for what the API shows but is not a hospital's."""
    return p.render("error.html", status=404, title="Not found", message="There is nothing here, or it is not visible to you.")


def _dataset_id(dataset: datasets_pb2.Dataset) -> str:
    return dataset.name.removeprefix("datasets/")


def _columns(dataset: datasets_pb2.Dataset) -> list[tuple[str, str, str, str]]:
    """(name, type, role, what intake did to it), stored and dropped columns alike."""
    rules = {g.name: g.rule for g in dataset.intake_report.generalized_columns}
    dropped, pseudonymised = set(dataset.intake_report.dropped_columns), set(dataset.intake_report.pseudonymized_columns)
    linkage = dataset.intake_report.linkage_column

    def treatment(column: datasets_pb2.ColumnSpec) -> str:
        if column.name in dropped:
            return "dropped at intake"
        if column.name == linkage:
            return "replaced by the platform-wide linkage pseudonym"
        if column.name in pseudonymised:
            return "pseudonymised (keyed HMAC-SHA256)"
        if column.name in rules:
            return f"coarsened: {rules[column.name]}"
        return "stored as uploaded"

    return [(c.name, _enum_words(datasets_pb2.ColumnType.Name(c.type)), _enum_words(datasets_pb2.ColumnRole.Name(c.role)),
             treatment(c)) for c in dataset.columns]


def _intake_rows(dataset: datasets_pb2.Dataset) -> list[tuple[str, str]]:
    """The intake report as (what, value) lines a person reads top to bottom."""
    r = dataset.intake_report
    rows = [
        ("Received", f"{_count(r.rows_received, 'row')} ({_count(r.bytes_received, 'byte')})"),
        ("Stored", f"{_count(r.rows_stored, 'row')}, {_count(dataset.patient_count, 'patient')}"),
        ("Rows without a patient key", f"{r.rows_without_patient_key:,} dropped (they cannot be bounded per patient)"),
        ("k-anonymity", f"k = {r.k_anonymity}: {r.classes_suppressed:,} of {r.equivalence_classes:,} quasi-identifier "
                        f"groups suppressed ({_count(r.rows_suppressed, 'row')})"),
        ("Dropped columns", ", ".join(r.dropped_columns) or "none"),
        ("Pseudonymised columns", ", ".join(r.pseudonymized_columns) or "none"),
        ("Coarsened columns", "; ".join(f"{g.name}: {g.rule}" for g in r.generalized_columns) or "none"),
        ("Linkage", f"{r.linkage_column} (platform-wide pseudonym; {r.rows_without_linkage_id:,} rows unlinked)"
                    if r.linkage_column else "none: this hospital's patients are counted apart from every other's"),
    ]
    if r.HasField("stream"):
        s = r.stream
        rows.append(("Stream", f"{s.readings:,} readings of {s.patients:,} patients, at {s.time_resolution_seconds} s "
                               f"resolution; {s.readings_merged:,} merged"))
    rows += [("Note", note) for note in r.notes]
    rows.append(("Encrypted file", f"SHA-256 {dataset.ciphertext_sha256}"))
    return rows


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _enum_words(name: str) -> str:
    return name.lower().replace("_", " ")
