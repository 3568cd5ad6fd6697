"""The privacy officer's inbox: pending requests, what each would cost, and deciding them.

Everything comes from ListPendingRequests as the signed-in officer: the API lists only the requests
this officer may decide (another hospital's are absent), with each budget before and after approval
and, per dataset, what would remain if every pending request were approved. Decisions go through
ApproveRequest / RejectRequest, which apply the policy (a reason is required; two officers where
the policy asks for them) and answer in their own words.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from starlette.responses import Response
from starlette.routing import Route

from cleanroom.console.pages.budget_views import Gauge, gauges, tightest
from cleanroom.console.web import Console, Page, Redirect, page
from cleanroom.sdk import Client
from cleanroom.v1 import privacy_pb2

PAGE_SIZE = 100
KIND_WORDS = {"training": "training job", "evaluation": "evaluation job", "statistics": "statistics query"}
# The mechanism each kind of request is charged under, in words, beside the request's own record of it.
MECHANISM_WORDS = {
    "training": "DP-SGD: subsampled Gaussian, PRV accountant",
    "evaluation": "Gaussian noise on the metrics, zCDP/RDP accountant",
    "statistics": "the statistic's own noise (Laplace by default, Gaussian where the query asks), basic composition",
}


def routes(console: Console) -> list[Route]:
    return [
        Route("/inbox", page(console, _inbox), methods=["GET"]),
        Route("/inbox/{request_id}", page(console, _detail), methods=["GET"]),
        Route("/inbox/{request_id}", page(console, _decide), methods=["POST"]),
    ]


@dataclass(frozen=True)
class Pending:
    """One pending request as the inbox shows it."""

    request: privacy_pb2.PrivacyRequest
    gauges: list[Gauge]

    @property
    def id(self) -> str:
        return self.request.name.removeprefix("privacyRequests/")

    @property
    def kind(self) -> str:
        return KIND_WORDS.get(self.request.kind, self.request.kind)

    @property
    def mechanism(self) -> str:
        words = MECHANISM_WORDS.get(self.request.kind, "")
        recorded = self.request.mechanism
        return f"{words} [{recorded}]" if words and recorded else words or recorded or "not recorded (an older request)"

    @property
    def work(self) -> str:
        return self.request.description or "not recorded (a request made before the service described its work)"

    @property
    def manufacturer(self) -> str:
        share = next((g.budget for g in self.gauges if g.budget.is_share), None)
        return share.who if share is not None else self.request.manufacturer

    @property
    def gauge(self) -> Gauge | None:
        return tightest(self.gauges)

    @property
    def fits(self) -> bool:
        return bool(self.request.remaining_after)

    @property
    def approvals_required(self) -> int:
        return max(1, self.request.approvals_required)


@dataclass(frozen=True)
class Composition:
    """A dataset's budgets now and once every pending request of it were approved."""

    dataset: str
    gauges: list[Gauge]
    included: list[str]
    not_fitting: list[str]


@dataclass(frozen=True)
class Inbox:
    requests: list[Pending]
    compositions: dict[str, Composition]
    dataset_names: dict[str, str]  # "datasets/{id}" -> its display name, as GetBudgets gives it

    def datasets(self) -> list[tuple[str, str]]:
        return sorted(self.dataset_names.items(), key=lambda d: (d[1].lower(), d[0]))

    def manufacturers(self) -> list[tuple[str, str]]:
        return sorted({(p.request.manufacturer, p.manufacturer) for p in self.requests}, key=lambda m: m[1].lower())

    def find(self, name: str) -> Pending | None:
        return next((p for p in self.requests if p.request.name == name), None)


def load_inbox(client: Client) -> Inbox:
    requests: list[Pending] = []
    compositions: dict[str, Composition] = {}
    for response in _pages(client):
        requests += [Pending(r, gauges(r.remaining_before, r.remaining_after)) for r in response.requests]
        for c in response.compositions:
            compositions.setdefault(c.dataset, Composition(c.dataset, gauges(c.remaining_before, c.remaining_after),
                                                           list(c.included), list(c.not_fitting)))
    names = {d: client.get_budgets(d).dataset_display_name or d for d in sorted({p.request.dataset for p in requests})}
    return Inbox(requests, compositions, names)


def _pages(client: Client) -> Iterator[privacy_pb2.ListPendingRequestsResponse]:
    token = ""
    while True:
        response = client.pending_page(PAGE_SIZE, token)
        yield response
        token = response.next_page_token
        if not token:
            return


def _inbox(p: Page) -> Response:
    inbox = load_inbox(p.client)
    dataset, manufacturer = p.query.get("dataset", ""), p.query.get("manufacturer", "")
    shown = [r for r in inbox.requests
             if (not dataset or r.request.dataset == dataset) and (not manufacturer or r.request.manufacturer == manufacturer)]
    compositions = [inbox.compositions[d] for d in sorted({r.request.dataset for r in shown}) if d in inbox.compositions]
    return p.render("inbox.html", title="Inbox: pending privacy requests", requests=shown, total=len(inbox.requests),
                    datasets=inbox.datasets(), dataset_names=inbox.dataset_names, manufacturers=inbox.manufacturers(), chosen_dataset=dataset,
                    chosen_manufacturer=manufacturer, compositions=compositions)


def _detail(p: Page) -> Response:
    name = f"privacyRequests/{p.path_params['request_id']}"
    inbox = load_inbox(p.client)
    pending = inbox.find(name)
    if pending is None:
        return p.render("error.html", status=404, title="Not found",
                        message="There is no pending request here for you: it was decided already, or it is not visible to you.")
    composition = inbox.compositions.get(pending.request.dataset)
    mine = any(a.officer == p.session.principal for a in pending.request.approvals)
    return p.render("inbox_request.html", title=f"Request {pending.id}", pending=pending, composition=composition,
                    dataset_name=inbox.dataset_names.get(pending.request.dataset, pending.request.dataset),
                    next_step=_next_step(pending, mine))


def _next_step(pending: Pending, mine: bool) -> str:
    have, need, kind = len(pending.request.approvals), pending.approvals_required, pending.kind
    cohort = (f" This is one hospital's part of cohort request {pending.request.group}: the {kind} runs, and its budget "
              "is reserved on every dataset, only once each hospital's officers have approved their part.") if pending.request.group else ""
    if need > have + 1 or (mine and need > have):
        return (f"{have} of {need} approvals so far. The next approval must come from an officer who has not approved it yet"
                f"{' (not you)' if mine else ''}: approving records it and the request stays pending until {need} different "
                f"officers have approved; only then is its ε reserved and the {kind} may run.{cohort}")
    return (f"Approving reserves its ε and δ on every budget it touches, and the {kind} may then run. "
            f"Rejecting ends the request; nothing is reserved or spent.{cohort}")


def _decide(p: Page) -> Response:
    name = f"privacyRequests/{p.path_params['request_id']}"
    here = f"/inbox/{p.path_params['request_id']}"
    decision, reason = p.field("decision"), p.field("reason")
    if decision not in ("approve", "reject"):
        raise Redirect(here, error="choose Approve or Reject")
    if not reason:
        raise Redirect(here, error=f"give a reason to {decision} the request: it is recorded in the audit log")
    decided = p.client.approve(name, reason) if decision == "approve" else p.client.reject(name, reason)
    if decided.state == "pending":
        have, need = len(decided.approvals), max(1, decided.approvals_required)
        raise Redirect(here, notice=f"Your approval is recorded ({have} of {need}); another officer must approve before it runs.")
    raise Redirect("/inbox", notice=_outcome(decided))


def _outcome(decided: privacy_pb2.PrivacyRequest) -> str:
    if decided.state == "rejected":
        return f"{decided.name} rejected: nothing was reserved or spent."
    if decided.group:
        return (f"{decided.name} approved for your hospital: cohort request {decided.group} runs, and its budget is reserved, "
                "once every hospital in it has approved.")
    return f"{decided.name} approved: its budget is reserved."
