"""`cleanroom stats …`: ask a DP question of a shared dataset, or price it first with --dry-run."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable

from google.protobuf.json_format import MessageToDict

from cleanroom.cli import render
from cleanroom.cli import trust as cli_trust
from cleanroom.domain.stream_views import DAY_COLUMN, StreamView, parse_view
from cleanroom.sdk import Client, Site
from cleanroom.sdk.cohort import parse_site as sdk_parse_site
from cleanroom.statistics.engine import Filter, Query
from cleanroom.statistics.engine.query import KINDS
from cleanroom.v1 import datasets_pb2

ClientFactory = Callable[[argparse.Namespace], Client]
WHERE = re.compile(r"^\s*(?P<column>[^\s!<>=]+)\s*(?P<op>==|!=|<=|>=|<|>|\bin\b)\s*(?P<value>.+?)\s*$")
EXAMPLES = """examples:
  cleanroom stats count datasets/d1 --epsilon 0.5
  cleanroom stats mean datasets/d1 --column mean_radius --bounds 0 40 --epsilon 0.5 --where "malignant == 1"
  cleanroom stats count datasets/d1 --group-by age --epsilon 1 --delta 1e-6 --dry-run
  cleanroom stats histogram datasets/d1 --column mean_radius --bins 0,10,15,20,40 --epsilon 0.5 --json
  cleanroom stats quantile datasets/d1 --column mean_radius --bounds 0 40 --quantiles 0.25,0.5,0.75 --epsilon 1
  cleanroom stats count datasets/d1 --epsilon 0.5 --root-pem root.pem --save answer.json   # verify now, keep the receipt
  cleanroom stats verify answer.json --root-pem root.pem                                   # verify later (auditors too)
  cleanroom stats mean datasets/s1 --stream-view daily_mean:heart_rate --column heart_rate_daily_mean \
      --group-by cohort --bounds 30 200 --rows-per-patient 7 --epsilon 1         # a stream: its patients' daily means
  cleanroom stats histogram datasets/s1 --stream-view readings:heart_rate --column heart_rate --bins 40,60,80,100,200 \
      --rows-per-patient 50 --epsilon 1                                           # up to 50 readings per patient
  cleanroom stats mean datasets/s1 --stream-view time_in_range:spo2:94:100 --column spo2_time_in_range \
      --group-by cohort --bounds 0 1 --epsilon 1                                   # each patient's time in range
  cleanroom stats mean --site datasets/d1 --site datasets/d2,radius=mean_radius --site datasets/d3 \
      --column radius --bounds 0 40 --epsilon 0.5                                         # three hospitals as one table

Every answer is noisy (differential privacy) and comes with a 95% interval; each run spends its ε
(and δ) from your share of the dataset's budget. --dry-run shows the cost and expected error first.
With --site (one per hospital's dataset, instead of DATASET) the query's column names are study
names, each mapped per site (a name a site does not map is its own column there); every site is
charged the same cost, all or none, and each hospital's policy decides its part. A person counts once
across the sites that declared a linkage column; --dry-run says who counts as one person.
The root to pin: see `cleanroom trust --help` (prefer the operator's `trust export` to `trust show --pem`).
Groups of a --group-by whose keys are not public need δ > 0: rare groups are then left out entirely."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], client: ClientFactory) -> None:
    stats = sub.add_parser("stats", help="DP statistics on a dataset shared with you (manufacturer); verify a saved answer",
                           description="Ask a differentially private question of a dataset shared with you, or verify a saved answer.",
                           epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = stats.add_subparsers(dest="kind", required=True, metavar="KIND")
    options = _query_options()
    for kind in KINDS:
        query = kinds.add_parser(kind, parents=[options], help=f"a DP {kind}", epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        query.set_defaults(handler=lambda a: _run(client(a), a))
    cli_trust.add_verify_command(kinds, client, render_answer)


def _query_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("dataset", nargs="?", default="", help="datasets/{id}; or name several hospitals' datasets with --site")
    parser.add_argument("--site", type=parse_site, action="append", default=[], metavar="DATASET[,STUDY=COLUMN...]",
                        help="one hospital's dataset in a cohort (repeat it per site, instead of DATASET): the query's "
                             "column names are study names, each mapped to this dataset's column (a name left out is the "
                             "same here). Example: --site datasets/d1 --site datasets/d2,radius=mean_radius")
    parser.add_argument("--column", help="the measured column (not needed for a plain count)")
    parser.add_argument("--stream-view", type=_parse_view, metavar="KIND:CHANNEL[:LOW:HIGH]",
                        help="required over a stream dataset: the per-patient table to query. daily_mean:CHANNEL (columns day, "
                             "CHANNEL_daily_mean; one row per patient-day), readings:CHANNEL (column CHANNEL; "
                             "--rows-per-patient readings drawn per patient), time_in_range:CHANNEL:LOW:HIGH (column "
                             "CHANNEL_time_in_range in [0, 1]; one row per patient). Each also has the stream's group columns")
    parser.add_argument("--epsilon", type=float, required=True, help="ε this query spends, e.g. 0.5")
    parser.add_argument("--delta", type=float, default=0.0,
                        help="δ; needed for --noise gaussian and for a --group-by whose keys are not public")
    parser.add_argument("--group-by", help="a categorical column. Keys the hospital declared (categories, age bands) are all "
                        "released, zero counts included; other groups below a DP threshold are left out")
    parser.add_argument("--where", action="append", default=[], metavar="'COLUMN OP VALUE'",
                        help="filter rows, e.g. 'age == 40-49' or 'site in a,b'; OP is == != < <= > >= in; repeatable")
    parser.add_argument("--bounds", nargs=2, type=float, metavar=("LOW", "HIGH"), help="public clamping bounds for sum, mean, variance, quantile")
    parser.add_argument("--estimate-bounds", action="store_true", help="estimate the bounds with DP instead (spends part of ε)")
    parser.add_argument("--bounds-epsilon", type=float, help="the part of ε for bounds estimation (default a quarter)")
    parser.add_argument("--bins", help="histogram edges for a numeric column, comma separated, e.g. 0,10,20,40")
    parser.add_argument("--quantiles", default="0.5", help="quantile levels, comma separated (default the median)")
    parser.add_argument("--rows-per-patient", type=int, help="most rows one patient contributes (default: the dataset's, 1)")
    parser.add_argument("--noise", choices=("laplace", "gaussian"), default="laplace", help="noise distribution (default laplace)")
    parser.add_argument("--privacy-request", default="", help="privacyRequests/{id}: an officer's approval of this very query")
    parser.add_argument("--dry-run", action="store_true", help="show the cost, the expected error and the budget; spend nothing")
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of a table")
    parser.add_argument("--root-pem", help="verify the answer's receipt against this pinned root public key (PEM file)")
    parser.add_argument("--save", metavar="FILE", help="write the answer with its receipt, for `cleanroom stats verify FILE`")
    return parser


def _run(client: Client, args: argparse.Namespace) -> int:
    if bool(args.dataset) == bool(args.site):
        print("error: name either DATASET or one --site per hospital's dataset", file=sys.stderr)
        return 2
    pinned = cli_trust.read_pinned_root(args.root_pem) if args.root_pem else None  # a bad PEM costs no ε
    query = build_query(args, _study_types(client, args.site) if args.site else _column_types(client, args.dataset))
    if args.dry_run:
        estimate = client.estimate_query(args.dataset, query, cohort=args.site)
        print(json.dumps(MessageToDict(estimate), indent=2) if args.json else render_estimate(estimate))
        return 0
    answer = client.run_query(args.dataset, query, privacy_request=args.privacy_request, cohort=args.site)
    print(answer.answer_json.decode() if args.json else render_answer(answer, receipt_hint=pinned is None))  # paid for: shown first
    if args.save:
        cli_trust.save_answer(answer, args.save)  # before the check: a failing receipt is evidence too
    if pinned is not None:
        verdict = cli_trust.verify_statistics(answer, pinned, client.trust_bundle().allowed_measurements)
        print(verdict, file=sys.stderr if args.json else sys.stdout)
    return 0


def _parse_view(text: str) -> StreamView:
    try:
        return parse_view(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _column_types(client: Client, dataset: str) -> dict[str, str]:
    """Filter values are typed by the column they compare against, from the schema you can see."""
    stored_as_text = (datasets_pb2.PATIENT_KEY, datasets_pb2.QUASI_IDENTIFIER)  # pseudonyms, generalised values
    shown = client.get_dataset(dataset)
    return {c.name: "string" if c.role in stored_as_text else datasets_pb2.ColumnType.Name(c.type).lower() for c in shown.columns}


def parse_site(text: str) -> Site:
    """DATASET[,STUDY=COLUMN...] as one cohort site (statistics read every site alike: no role)."""
    try:
        return sdk_parse_site(text, with_role=False)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _study_types(client: Client, sites: list[Site]) -> dict[str, str]:
    """A cohort's filter values are typed by the first site's columns, under their study names."""
    types = _column_types(client, sites[0].dataset)
    return {**types, **{study: types[column] for study, column in sites[0].columns.items() if column in types}}


def build_query(args: argparse.Namespace, types: dict[str, str]) -> Query:
    view = getattr(args, "stream_view", None)
    if view is not None:  # the view's own columns, for typing filter values
        types = {**types, DAY_COLUMN: "integer", view.value_column: "float"}
    return Query(
        kind=args.kind, epsilon=args.epsilon, delta=args.delta, column=args.column, group_by=args.group_by,
        filters=tuple(parse_where(text, types) for text in args.where),
        bounds=tuple(args.bounds) if args.bounds else None, estimate_bounds=args.estimate_bounds,
        bounds_epsilon=args.bounds_epsilon, bins=_numbers(args.bins) if args.bins else None,
        quantiles=_numbers(args.quantiles), max_rows_per_patient=args.rows_per_patient, noise=args.noise, stream_view=view,
    )


def _numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise SystemExit(f"expected comma-separated numbers, got {text!r}") from None


def parse_where(text: str, types: dict[str, str]) -> Filter:
    match = WHERE.match(text)
    if match is None:
        raise SystemExit(f"--where needs 'COLUMN OP VALUE' with OP one of == != < <= > >= in, got {text!r}")
    column, op, raw = match["column"], match["op"], match["value"]
    kind = types.get(column, "string")
    if op == "in":
        return Filter(column, op, tuple(_typed(v.strip(), kind) for v in raw.split(",")))
    return Filter(column, op, _typed(raw, kind))


def _typed(raw: str, kind: str) -> object:
    if kind in ("integer", "float"):
        try:
            return float(raw)
        except ValueError:
            raise SystemExit(f"{raw!r} is not a number") from None
    if kind == "boolean":
        return raw.lower() in ("true", "1", "yes")
    return raw


def render_answer(answer, *, receipt_hint: bool = True) -> str:  # type: ignore[no-untyped-def]
    grouped = any(c.key for c in answer.cells)
    headers = (*(["group"] if grouped else []), "statistic", "value", "± (95%)")
    rows = []
    for cell in answer.cells:
        label = f"{cell.statistic}@{cell.level:g}" if cell.HasField("level") else cell.statistic
        width = f"{cell.half_width:.4g}" + (" rows" if cell.unit == "rows" else "")
        rows.append((*([" / ".join(cell.key)] if grouped else []), label, f"{cell.value:.6g}", width))
    lines = [render.table(headers, rows) if rows else "no group passed the release threshold (rare groups are never shown)"]
    lines.append(f"spent ε {answer.epsilon:g}, δ {answer.delta:.2g} · {answer.mechanism} · "
                 f"at most {answer.rows_per_patient} row(s) per patient")
    if answer.cohort:
        lines.append(f"cohort of {len(answer.cohort)} sites, each charged that ε: " + ", ".join(s.dataset for s in answer.cohort))
    if any(c.statistic == "count" and c.value < 0 for c in answer.cells):
        lines.append("a negative count is noise around a true count near zero (left as drawn: clamping would bias sums)")
    if answer.HasField("bounds"):
        lines.append(f"values clamped to [{answer.bounds.lower:g}, {answer.bounds.upper:g}]")
    if receipt_hint:  # left out where the verdict on the receipt follows
        lines.append("receipt: signed by the enclave (check it with --root-pem, or --save FILE and `cleanroom stats verify FILE`)")
    return "\n".join(lines)


def render_estimate(estimate) -> str:  # type: ignore[no-untyped-def]
    if estimate.site_budgets:  # a cohort: every site's budgets, then who counts as one person
        lines = [render.cost_estimate(budget) for budget in estimate.site_budgets]
        lines.append(f"privacy unit: {estimate.linkage}")
    else:
        lines = [render.cost_estimate(estimate.budget)]
    errors = [(name, f"{value:.4g}") for name, value in sorted(estimate.expected_error.items())]
    lines.append(render.table(("noisy part", "expected 95% half-width"), errors))
    return "\n".join(lines)
