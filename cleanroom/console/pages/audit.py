"""The audit log: the hash-chained entries the API lets this person read, searched, filtered and
paged (newest first); the one-click integrity check (VerifyAuditLog) that names where a chain
breaks; one entry's page; and the signed export a regulator checks against the pinned root.

Every entry comes from ExportAuditLog with the signed-in person's token, so the API's own scope
decides what a hospital sees; the console only filters and pages what it was given.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.responses import Response
from starlette.routing import Route

from cleanroom.console.web import Console, Page, page
from cleanroom.domain.audit import AuditEntry, entry_hash

PER_PAGE = 50
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ANCHOR = re.compile(r"(\d+):([0-9a-f]{64})")


def routes(console: Console) -> list[Route]:
    return [
        Route("/audit", page(console, _log)),
        Route("/audit/verify", page(console, _verify)),
        Route("/audit/export", page(console, _export)),
        Route("/audit/entries/{seq:int}", page(console, _entry)),
    ]


@dataclass(frozen=True)
class Filters:
    text: str = ""
    action: str = ""
    actor: str = ""
    target: str = ""
    since: str = ""      # YYYY-MM-DD, inclusive
    until: str = ""      # YYYY-MM-DD, inclusive

    def matches(self, entry: dict[str, Any]) -> bool:
        fields = (entry["action"], entry["actor"], entry["target"])
        day = entry["at"][:10]
        return ((not self.text or any(self.text.lower() in f.lower() for f in fields))
                and (not self.action or entry["action"] == self.action)
                and (not self.actor or self.actor.lower() in entry["actor"].lower())
                and (not self.target or self.target.lower() in entry["target"].lower())
                and (not self.since or day >= self.since) and (not self.until or day <= self.until))

    def query(self, page_number: int) -> str:
        """The query string of this search at another page."""
        names = {"text": "q"}  # the form's field for free text
        values = {names.get(k, k): v for k, v in vars(self).items() if v}
        return urlencode({**values, "page": page_number})


def _filters(p: Page) -> tuple[Filters, list[str]]:
    """The search from the query string; a malformed date is ignored and said so, never an error page."""
    problems = []
    dates = {}
    for name in ("since", "until"):
        value = p.query.get(name, "").strip()
        if value and not _valid_date(value):
            problems.append(f"“{name}” must be a date like 2026-12-07; it was ignored")
            value = ""
        dates[name] = value
    text = {name: p.query.get(name, "").strip()[:200] for name in ("q", "action", "actor", "target")}
    return Filters(text["q"], text["action"], text["actor"], text["target"], dates["since"], dates["until"]), problems


def _valid_date(value: str) -> bool:
    if not _DATE.fullmatch(value):
        return False
    try:
        datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return False
    return True


def _page_number(p: Page) -> int:
    value = p.query.get("page", "1")
    return max(1, int(value)) if value.isdigit() and len(value) < 9 else 1


def _log(p: Page) -> Response:
    filters, problems = _filters(p)
    actions: set[str] = set()
    matching: list[dict[str, Any]] = []
    for line in p.client.export_audit_log():
        entry = json.loads(line)
        actions.add(entry["action"])
        if filters.matches(entry):
            matching.append(entry)
    pages = max(1, -(-len(matching) // PER_PAGE))
    number = min(_page_number(p), pages)
    newest_first = matching[::-1][(number - 1) * PER_PAGE: number * PER_PAGE]
    p.notices.extend(("error", problem) for problem in problems)
    return p.render("audit.html", title="Audit log", entries=[_row(e) for e in newest_first], filters=filters,
                    actions=sorted(actions), total=len(matching), page_number=number, pages=pages)


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    details = ", ".join(f"{k}: {_short(v)}" for k, v in sorted(entry.get("details", {}).items()))
    return {**entry, "details_text": details}


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "…"


def _verify(p: Page) -> Response:
    anchor_text = p.query.get("anchor", "").strip()
    anchor = _ANCHOR.fullmatch(anchor_text)
    if anchor_text and not anchor:
        p.notices.append(("error", "an anchor is “seq:hash” (the hash 64 lowercase hex), as a previous check printed it; it was ignored"))
    seq, digest = (int(anchor.group(1)), anchor.group(2)) if anchor else (0, "")
    verdict = p.client.verify_audit_log(anchor_seq=seq, anchor_hash=digest)
    checked_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return p.render("audit_verify.html", title="Audit log integrity", verdict=verdict, anchor=anchor_text if anchor else "",
                    checked_at=checked_at)


def _export(p: Page) -> Response:
    document = p.client.signed_audit_export()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Response(document, media_type="application/json",
                    headers={"content-disposition": f'attachment; filename="cleanroom-audit-export-{stamp}.json"'})


def _entry(p: Page) -> Response:
    seq = int(p.path_params["seq"])
    found = None
    if seq > 0:
        for line in p.client.export_audit_log(after_seq=seq - 1):
            candidate = json.loads(line)
            found = candidate if candidate["seq"] == seq else None
            break  # the first entry after seq-1 is seq itself, or seq is not visible to this person
    if found is None:
        return p.render("error.html", status=404, title="Not found", message="There is nothing here, or it is not visible to you.")
    holds = entry_hash(AuditEntry(found["seq"], found["at"], found["actor"], found["action"], found["target"],
                                  found["details"], found["prev_hash"], found["hash"])) == found["hash"]
    return p.render("audit_entry.html", title=f"Audit entry {seq}", entry=found, holds=holds,
                    details=sorted(found["details"].items()), pretty=json.dumps(found, indent=2, sort_keys=True, ensure_ascii=False))
