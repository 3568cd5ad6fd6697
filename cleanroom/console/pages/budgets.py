"""Budgets and the approval policy: per dataset and per manufacturer share, over time, and editable.

Everything is the API's: GetBudgets (officers and auditors of the dataset's hospital; another
hospital's dataset is NOT_FOUND, so a 404 here), ListLedger for the chart, SetApprovalPolicy,
SetBudget and ShareDataset for the forms (the API refuses a role that may not change them). The
API has no dataset list for officers, so the index lists the datasets whose caps the ledger shows
(every budget starts with a cap event) and those with pending requests, and can open any by name.
"""

from __future__ import annotations

import math

from starlette.responses import Response
from starlette.routing import Route

from cleanroom.console.pages.budget_chart import chart, spend_points
from cleanroom.console.pages.budget_preview import Preview, preview
from cleanroom.console.pages.budget_views import BudgetLine, lines
from cleanroom.console.web import Console, Page, Redirect, page
from cleanroom.v1 import privacy_pb2

DATASET_PREFIX = "datasets/"


def routes(console: Console) -> list[Route]:
    return [
        Route("/budgets", page(console, _index), methods=["GET"]),
        Route("/budgets/{dataset_id}", page(console, _dataset), methods=["GET"]),
        Route("/budgets/{dataset_id}", page(console, _change), methods=["POST"]),
    ]


def _index(p: Page) -> Response:
    wanted = p.query.get("dataset", "").strip().removeprefix(DATASET_PREFIX)
    if wanted:
        raise Redirect(f"/budgets/{wanted}")
    names = {d.name for d in p.client.list_datasets()}  # the datasets this officer or auditor governs
    reports = [p.client.get_budgets(name) for name in sorted(names)]
    summaries = [(r, next((b for b in lines(r.budgets) if not b.is_share), None), sum(1 for b in r.budgets if b.manufacturer))
                 for r in reports]
    return p.render("budgets.html", title="Budgets", summaries=summaries)


def _dataset(p: Page) -> Response:
    dataset = f"{DATASET_PREFIX}{p.path_params['dataset_id']}"
    report = p.client.get_budgets(dataset)
    budgets = lines(report.budgets)
    whole = next((b for b in budgets if not b.is_share), None)
    points = spend_points(dataset, p.client.ledger(dataset=dataset), {b.name: b.who for b in budgets if b.is_share})
    policy = report.policy
    shown = _preview(p, budgets, policy)
    return p.render("budgets_dataset.html", title=f"Budgets: {report.dataset_display_name or dataset}", report=report,
                    dataset=dataset, dataset_id=p.path_params["dataset_id"], budgets=budgets, whole=whole,
                    chart=chart(points, whole.cap_epsilon if whole else 0.0), policy=policy, preview=shown,
                    may_edit=p.session.role == "privacy_officer")


def _preview(p: Page, budgets: list[BudgetLine], policy: privacy_pb2.ApprovalPolicy) -> Preview:
    """The preview at the ε chosen in the query string; by default a job at the policy's per-request
    limit and a query at its auto-approve line (or 1 and 0.1 where the policy sets none)."""
    return preview(
        budgets,
        job_epsilon=_number(p.query.get("job_epsilon"), policy.max_epsilon_per_request or 1.0),
        job_delta=_number(p.query.get("job_delta"), policy.effective_max_delta),
        query_epsilon=_number(p.query.get("query_epsilon"), policy.auto_approve_epsilon or 0.1),
        bounds=(_number(p.query.get("lower"), 0.0), _number(p.query.get("upper"), 100.0)),
        rows_per_patient=max(1, policy.stats_rows_per_patient),
    )


def _number(text: str | None, default: float) -> float:
    try:
        value = float(text) if text else default
    except ValueError:
        return default
    return value if math.isfinite(value) else default


def _change(p: Page) -> Response:
    """One form per change, told apart by `action`; refusals come back as the API's words."""
    dataset_id = p.path_params["dataset_id"]
    dataset, here = f"{DATASET_PREFIX}{dataset_id}", f"/budgets/{dataset_id}"
    action, reason = p.field("action"), p.field("reason")
    if action not in ("policy", "cap", "share"):
        raise Redirect(here, error="that form is not one of this page's")
    if not reason:
        raise Redirect(here, error="give a reason: it is recorded in the audit log")
    if action == "policy":
        _set_policy(p, dataset, reason, here)
        raise Redirect(here, notice="The approval policy is saved.")
    epsilon, delta = _field_number(p, "epsilon", "ε", here), _field_number(p, "delta", "δ", here)
    manufacturer = _principal(p.field("manufacturer"))
    if action == "share":
        if not manufacturer:
            raise Redirect(here, error="name the manufacturer to share with (principals/{id})")
        p.client.share_dataset(dataset, manufacturer, epsilon=epsilon, delta=delta, reason=reason)
        raise Redirect(here, notice=f"Shared with {manufacturer}: cap ε {epsilon:g}, δ {delta:g}.")
    p.client.set_budget(dataset, epsilon=epsilon, delta=delta, reason=reason, manufacturer=manufacturer)
    raise Redirect(here, notice=f"The {'share' if manufacturer else 'dataset-wide'} cap is now ε {epsilon:g}, δ {delta:g}.")


def _set_policy(p: Page, dataset: str, reason: str, here: str) -> None:
    approvals = p.field("approvals_required")
    if approvals not in ("1", "2"):
        raise Redirect(here, error="approvals required: choose one or two officers")
    p.client.set_approval_policy(
        dataset, reason=reason,
        max_epsilon=_field_number(p, "max_epsilon", "max ε per request", here),
        max_delta=_field_number(p, "max_delta", "max δ per request", here, blank=0.0),
        auto_approve_epsilon=_field_number(p, "auto_approve_epsilon", "auto-approve line", here, blank=0.0),
        stats_rows_per_patient=int(_field_number(p, "stats_rows_per_patient", "rows per patient", here, blank=0.0, whole=True)),
        require_privacy_audit=p.field("require_privacy_audit") == "on",
        approvals_required=int(approvals),
    )


def _field_number(p: Page, name: str, words: str, here: str, *, blank: float | None = None, whole: bool = False) -> float:
    text = p.field(name)
    if not text and blank is not None:
        return blank
    try:
        value = float(text)
    except ValueError:
        raise Redirect(here, error=f"{words}: enter a number") from None
    if not math.isfinite(value) or (whole and value != int(value)):
        raise Redirect(here, error=f"{words}: enter a {'whole ' if whole else ''}number")
    return value


def _principal(text: str) -> str:
    return "" if not text else (text if text.startswith("principals/") else f"principals/{text}")
