"""Release pages: every release the API lets this person see, and one page per release (a stable
URL, /releases/{id}) with its signed receipt verified here, on the console's server, against the
trust root: each named check with its words, and one unmistakable verdict.

The trust root is the pinned file (ConsoleConfig.trust_root) when there is one; without it the
console asks the server (GetTrustBundle) and says on the page that the root was fetched, not
pinned. Artefacts are served as downloads only; the DP validation report's figures are drawn here
from the released metrics.json as SVG images (data: URIs, which run no script), never by
rendering the service's HTML inside the console.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from itertools import islice
from typing import Any
from urllib.parse import quote, urlencode

import grpc
from starlette.responses import Response
from starlette.routing import Route

import enclave_sim
from cleanroom.console.web import Console, Page, page
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.sdk.release_check import Check, verify_release
from cleanroom.sdk.releases import KINDS, kind_name
from cleanroom.trainer.report import NAMES, net_benefit_svg, reliability_svg, roc_svg
from cleanroom.v1 import releases_pb2

PER_PAGE = 50
SHOWN_ANSWER_CHARACTERS = 20_000


def routes(console: Console) -> list[Route]:
    return [
        Route("/releases", page(console, _list)),
        Route("/releases/{release_id}", page(console, _release)),
        Route("/releases/{release_id}/files/{artifact}", page(console, _download)),
    ]


def _list(p: Page) -> Response:
    kind = p.query.get("kind", "") if p.query.get("kind", "") in KINDS else ""
    dataset = p.query.get("dataset", "").strip()[:100]
    number = int(p.query["page"]) if p.query.get("page", "").isdigit() and len(p.query["page"]) < 7 else 1
    number = max(1, number)
    found = list(islice(p.client.list_releases(kind=kind, dataset=dataset, page_size=PER_PAGE), (number - 1) * PER_PAGE,
                        number * PER_PAGE + 1))
    more = len(found) > PER_PAGE
    rows = [_summary(r) for r in found[:PER_PAGE]]
    base = {k: v for k, v in (("kind", kind), ("dataset", dataset)) if v}
    return p.render("releases.html", title="Releases", releases=rows, kind=kind, kinds=list(KINDS), dataset=dataset,
                    page_number=number, newer=urlencode({**base, "page": number - 1}) if number > 1 else "",
                    older=urlencode({**base, "page": number + 1}) if more else "")


def _summary(release: releases_pb2.Release) -> dict[str, Any]:
    return {"id": release.name.removeprefix("releases/"), "name": release.name, "kind": kind_name(release.kind),
            "summary": release.summary, "source": release.source, "datasets": list(release.datasets),
            "manufacturer": release.manufacturer, "released_at": _time(release.released_at),
            "epsilon": release.spent.epsilon, "delta": release.spent.delta}


def _time(stamp: Any) -> str:
    return str(stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")) if stamp.seconds else ""


@dataclass(frozen=True)
class TrustRoot:
    pem: bytes | None        # None: no usable root, so nothing can verify
    pinned: bool
    measurements: tuple[str, ...]
    problem: str = ""

    @property
    def fingerprint(self) -> str:
        return enclave_sim.key_fingerprint(enclave_sim.load_public_key_pem(self.pem)) if self.pem else ""


def trust_root(p: Page) -> TrustRoot:
    """The pinned root when configured (a file that is not a root key is reported, never replaced by
    the server's); else the server's, marked as not pinned. Measurements: the server's published list."""
    bundle = p.client.trust_bundle()
    measurements = tuple(bundle.allowed_measurements)
    path = p.console.config.trust_root
    if path is None:
        return TrustRoot(_usable(bundle.root_public_key_pem.encode("ascii")), False, measurements)
    try:
        pem = _usable(path.read_bytes())
    except OSError:
        pem = None
    problem = "" if pem else "the console's pinned trust root file cannot be read as an Ed25519 public key"
    return TrustRoot(pem, True, measurements, problem)


def _usable(pem: bytes) -> bytes | None:
    try:
        enclave_sim.load_public_key_pem(pem)
    except (ValueError, TypeError):
        return None
    return pem


def _release(p: Page) -> Response:
    name = f"releases/{p.path_params['release_id']}"
    release = p.client.get_release(name)
    files = p.client.download_release(release)
    root = trust_root(p)
    if root.pem is None:
        checks = [Check("trust root", False, root.problem or "the server's trust root is not an Ed25519 public key")]
    else:
        checks = verify_release(release, files, pinned_root_pem=root.pem, allowed_measurements=root.measurements)
    return p.render("release.html", title=f"Release {release.name.removeprefix('releases/')}", release=_summary(release),
                    checks=checks, verified=all(c.passed for c in checks), failed=[c.name for c in checks if not c.passed],
                    root=root, artifacts=[{"name": a.name, "size": a.size_bytes, "sha256": a.sha256,
                                           "href": f"/releases/{quote(p.path_params['release_id'])}/files/{quote(a.name)}"}
                                          for a in release.artifacts],
                    report=_report(files.get("metrics.json")), answer=_answer(files.get("answer.json")),
                    ledger=[_ledger_row(e) for e in release.ledger_events], audit=_audit_entries(p.client, list(release.audit_seqs)))


def _report(metrics: bytes | None) -> dict[str, Any] | None:
    """The DP validation report from metrics.json: its privacy statement, metrics and figures."""
    if not metrics:
        return None
    try:
        data = json.loads(metrics)
        evaluation = data.get("evaluation") or {}
        rows = [{"name": NAMES.get(k, k), "value": v["value"], "low": v["ci95"][0], "high": v["ci95"][1]}
                for k, v in sorted((evaluation.get("metrics") or {}).items())]
        figures = [svg for svg in (roc_svg([tuple(x) for x in evaluation["roc_points"]]) if evaluation.get("roc_points") else "",
                                   reliability_svg(evaluation["reliability"]) if evaluation.get("reliability") else "",
                                   net_benefit_svg(evaluation["net_benefit"]) if evaluation.get("net_benefit") else "") if svg]
        return {"statement": str((data.get("privacy") or {}).get("statement", "")), "metrics": rows,
                "figures": [{"src": "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii"),
                             "label": _label(svg)} for svg in figures],
                "training": data.get("training")}
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return {"statement": "", "metrics": [], "figures": [], "training": None, "unreadable": True}


def _label(svg: str) -> str:
    start = svg.find('aria-label="')
    return svg[start + 12: svg.find('"', start + 12)] if start >= 0 else "figure"


def _answer(answer: bytes | None) -> dict[str, Any] | None:
    """A statistics answer: its cells as rows (what a person reads) and the JSON as released."""
    if not answer:
        return None
    try:
        parsed = json.loads(answer)
        text = json.dumps(parsed, indent=1, sort_keys=True, ensure_ascii=False)
    except ValueError:
        return {"cells": [], "json": answer.decode("utf-8", "replace")[:SHOWN_ANSWER_CHARACTERS]}
    cells = parsed.get("cells") if isinstance(parsed, dict) else None
    rows = [{"key": ", ".join(str(k) for k in c.get("key") or []) or "all", "statistic": str(c.get("statistic", "")),
             "value": c.get("value"), "half_width": c.get("half_width"), "unit": str(c.get("unit") or "")}
            for c in (cells if isinstance(cells, list) else []) if isinstance(c, dict)]
    return {"cells": rows, "json": text[:SHOWN_ANSWER_CHARACTERS], "confidence": parsed.get("confidence") if isinstance(parsed, dict) else None}


def _ledger_row(event: Any) -> dict[str, Any]:
    return {"seq": event.seq, "kind": event.kind, "budgets": ", ".join(event.budgets), "epsilon": event.amount.epsilon,
            "delta": event.amount.delta, "mechanism": event.mechanism, "actor": event.actor, "time": _time(event.time),
            "reason": event.reason}


def _audit_entries(client: Client, seqs: list[int]) -> list[dict[str, Any]]:
    """The release's audit entries as this person may read them (one that is not visible keeps its seq only)."""
    if not seqs:
        return []
    wanted, found = set(seqs), {}
    try:
        for line in client.export_audit_log(after_seq=min(seqs) - 1):
            entry = json.loads(line)
            if entry["seq"] > max(seqs):
                break
            if entry["seq"] in wanted:
                found[entry["seq"]] = entry
    except CleanroomClientError as error:
        if error.code is not grpc.StatusCode.PERMISSION_DENIED:
            raise
        return [{"seq": seq, "readable": False} for seq in sorted(wanted)]  # a role the API keeps from the audit log
    return [found.get(seq, {"seq": seq}) for seq in sorted(wanted)]


def _download(p: Page) -> Response:
    name, artifact = f"releases/{p.path_params['release_id']}", str(p.path_params["artifact"])
    release = p.client.get_release(name)
    if artifact not in {a.name for a in release.artifacts}:
        return p.render("error.html", status=404, title="Not found", message="There is nothing here, or it is not visible to you.")
    data = p.client.download_release_artifact(name, artifact)
    # Always a download, never rendered by the console's origin (report.html is the service's HTML).
    return Response(data, media_type="application/octet-stream",
                    headers={"content-disposition": f"attachment; filename=\"{quote(artifact)}\""})
