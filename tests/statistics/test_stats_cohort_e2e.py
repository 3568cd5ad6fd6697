"""DP statistics over a three-hospital cohort through a real server (gRPC on a port, a real warm
worker in bubblewrap, SQLite): counts, sums, means, histograms and quantiles across the sites, the
per-person bound with and without linkage, one atomic charge on every site, per-site approval,
receipts, and bad input that costs nothing.

Counts use ε = 40: discrete Laplace noise of scale L/40 is zero except with probability ~1e-8, so
they are exact and a planted person's effect can be counted."""

from __future__ import annotations

import csv
import hashlib
import json

import grpc
import pytest

from cleanroom.cli import main as cli
from cleanroom.domain.cohort import cohort_key
from cleanroom.domain.identity import Role
from cleanroom.sdk import CleanroomClientError, Site
from cleanroom.sdk.schema import Schema
from cleanroom.sdk.stats import verify_answer
from cleanroom.statistics.engine import Query
from cleanroom.statistics.engine.codec import stats_workload
from cleanroom.storage import audit_repo, dataset_repo, privacy_repo
from cleanroom.v1 import datasets_pb2 as R
from tests.conftest import internal_calls, make_config, start_server
from tests.tools import needs

pytestmark = needs("bwrap")

SINGLES = 40        # patients with one row at each hospital
PLANTED_ROWS = 4    # the planted person's rows at each hospital
EXACT = 40.0        # ε of the exact counts
RADIUS = {0: "radius", 1: "mean_radius", 2: "radius"}  # what each hospital calls the study's radius


def _write(path, site: int) -> None:
    """One hospital's records: SINGLES patients with one row each (their own identifiers) and the
    planted person (the same resident registration number at every hospital) with PLANTED_ROWS."""
    rows = [{"patient_id": f"h{site}-p{j}", "rrn": f"{site}{j:05d}-2000000", RADIUS[site]: f"{10 + j % 10}",
             "sex": "FM"[j % 2], "malignant": str(j % 2)} for j in range(SINGLES)]
    rows += [{"patient_id": f"h{site}-planted", "rrn": "850101-1000001", RADIUS[site]: "20", "sex": "F", "malignant": "1"}
             for _ in range(PLANTED_ROWS)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _schema(site: int, *, linked: bool, categories: tuple[str, ...] = ("F", "M")) -> Schema:
    C = R.ColumnSpec
    return Schema([
        C(name="patient_id", type=R.STRING, role=R.PATIENT_KEY),
        C(name="rrn", type=R.STRING, role=R.LINKAGE_ID if linked else R.DIRECT_IDENTIFIER),
        C(name=RADIUS[site], type=R.FLOAT, role=R.FEATURE),
        C(name="sex", type=R.STRING, role=R.FEATURE, categories=list(categories)),
        C(name="malignant", type=R.INTEGER, role=R.LABEL, label_classes=2, categories=["0", "1"]),
    ], 2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("cohort-stats")
    running = start_server(make_config(base / "state", work_dir=base / "work", stats_allowance_idle=600.0))
    maker_id, maker_token = running.principal(Role.MANUFACTURER)
    _, officer_token = running.principal(Role.PRIVACY_OFFICER)  # the operator's: governs every hospital
    maker, officer = running.client(maker_token), running.client(officer_token)
    owners = [running.client(running.principal(Role.DATA_OWNER)[1]) for _ in range(3)]  # one hospital each

    def upload(site: int, *, linked: bool, epsilon: float = 500.0, share: bool = True, **schema: object) -> str:
        path = base / f"h{site}-{len(list(base.iterdir()))}.csv"
        _write(path, site)
        dataset = owners[site].upload_dataset(path, _schema(site, linked=linked, **schema))  # type: ignore[arg-type]
        officer.set_budget(dataset.name, epsilon=1000, delta=1e-3, reason="study")
        if share:
            officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=epsilon, delta=1e-3, reason="study")
        officer.set_approval_policy(dataset.name, max_epsilon=100, auto_approve_epsilon=50, reason="study")
        return dataset.name

    linked = [upload(i, linked=True) for i in range(3)]
    unlinked = [upload(i, linked=False) for i in range(3)]
    poor = upload(2, linked=True, epsilon=1.0)                          # budget short on this site
    odd_keys = upload(0, linked=True, categories=("F", "M", "X"))       # another key space for sex
    unshared = upload(1, linked=True, share=False)
    yield {"running": running, "maker": maker, "maker_id": maker_id, "maker_token": maker_token, "officer": officer, "linked": linked, "unlinked": unlinked, "poor": poor,
           "odd_keys": odd_keys, "unshared": unshared}
    for client in (maker, officer, *owners):
        client.close()
    running.server.stop(grace=0)
    assert internal_calls(running.app) == {}, "calls counted INTERNAL in cleanroom_rpc_requests_total"


def _sites(names: list[str]) -> list[Site]:
    return [Site(name, {"radius": RADIUS[i]} if RADIUS[i] != "radius" else {}) for i, name in enumerate(names)]


def _count(world, names: list[str], rows: int) -> float:
    answer = world["maker"].run_query("", Query(kind="count", epsilon=EXACT, max_rows_per_patient=rows), cohort=_sites(names))
    return answer.cells[0].value


def _events(world) -> list:
    with world["running"].app.db.read() as session:
        return privacy_repo.events(session)


def _balances(world, names: list[str]) -> list:
    return [[(b.name, b.remaining) for b in world["officer"].get_budgets(n).budgets] for n in names]


@pytest.mark.parametrize("rows", [1, 3])
def test_with_linkage_the_planted_person_counts_at_most_the_bound_across_all_sites(world, rows: int) -> None:
    assert _count(world, world["linked"], rows) == 3 * SINGLES + rows  # 12 rows at three hospitals: one person


@pytest.mark.parametrize("rows", [1, 3])
def test_without_linkage_each_sites_copy_is_bounded_separately(world, rows: int) -> None:
    assert _count(world, world["unlinked"], rows) == 3 * SINGLES + 3 * rows


def test_a_query_without_a_row_bound_gets_the_smallest_of_the_sites_policies(world) -> None:
    names = world["unlinked"]
    for name, rows in zip(names, (3, 2, 4)):
        world["officer"].set_approval_policy(name, max_epsilon=100, auto_approve_epsilon=50, reason="study", stats_rows_per_patient=rows)
    answer = world["maker"].run_query("", Query(kind="count", epsilon=EXACT), cohort=_sites(names))
    assert answer.rows_per_patient == 2 and answer.cells[0].value == 3 * SINGLES + 3 * 2


def test_sums_means_histograms_and_quantiles_read_every_sites_mapped_column(world) -> None:
    maker, sites = world["maker"], _sites(world["linked"])
    radii = [10 + j % 10 for j in range(SINGLES)] * 3 + [20]  # the planted person: one row kept (bound 1)
    total = maker.run_query("", Query(kind="sum", column="radius", bounds=(0.0, 40.0), epsilon=EXACT), cohort=sites).cells[0]
    # The sum's noise is Laplace with scale 1 even at this ε (bounds 0..40): its 95% half-width misses 1 run
    # in 20, three of them about 1 in 8,000 (a tighter check would fail by chance, not by a bug).
    assert abs(total.value - sum(radii)) <= max(3 * total.half_width, 1.0)
    mean = maker.run_query("", Query(kind="mean", column="radius", bounds=(0.0, 40.0), epsilon=EXACT), cohort=sites).cells[0]
    assert abs(mean.value - sum(radii) / len(radii)) <= max(3 * mean.half_width, 0.05)
    histogram = maker.run_query("", Query(kind="histogram", column="sex", epsilon=EXACT), cohort=sites)
    assert {tuple(c.key): round(c.value) for c in histogram.cells} == {("F",): 3 * SINGLES // 2 + 1, ("M",): 3 * SINGLES // 2}
    median = maker.run_query("", Query(kind="quantile", column="radius", bounds=(0.0, 40.0), epsilon=EXACT), cohort=sites).cells[0]
    assert 13.0 <= median.value <= 16.0  # the middle of 10..19, three times over
    grouped = maker.run_query("", Query(kind="count", group_by="malignant", epsilon=EXACT), cohort=sites)
    assert {tuple(c.key): round(c.value) for c in grouped.cells} == {("0",): 3 * SINGLES // 2, ("1",): 3 * SINGLES // 2 + 1}


def test_every_site_is_charged_the_same_cost_in_one_spend_and_audits_its_own_part(world) -> None:
    names = world["linked"]
    answer = world["maker"].run_query("", Query(kind="count", epsilon=2.0), cohort=_sites(names))
    spend_id = [e for e in _events(world) if e.kind.value == "commit"][-1].spend_id
    for name in names:  # each hospital's ledger, as its officer reads it: its own two budgets, the same cost
        own = [e for e in world["officer"].ledger(dataset=name, kind="commit") if e.spend == spend_id]
        assert len(own) == 1 and own[0].amount.epsilon == pytest.approx(2.0)
        assert sorted(own[0].budgets) == sorted([name, f"{name}/manufacturers/{world['maker_id']}"])
    with world["running"].app.db.read() as session:
        entries = [e for e in audit_repo.entries(session) if e.action == "stats.answer" and e.details.get("spend") == spend_id]
    assert sorted(e.target.split("/queries/")[0] for e in entries) == sorted(names)  # one entry per hospital, each its own dataset
    assert [s.dataset for s in answer.cohort] == names and answer.dataset == names[0]


def test_the_receipt_names_the_cohorts_workload_and_every_sites_ciphertext(world) -> None:
    names, enclave = world["linked"], world["running"].app.enclave
    answer = world["maker"].run_query("", Query(kind="count", epsilon=1.0), cohort=_sites(names))
    verified = verify_answer(answer, pinned_root_pem=enclave.root.public_key_pem(), allowed_measurements=[enclave.measurement])
    ids = [n.removeprefix("datasets/") for n in names]
    assert verified.report.workload == stats_workload(cohort_key(ids))
    with world["running"].app.db.read() as session:
        lines = "".join(f"{i}:{dataset_repo.get_dataset(session, i).ciphertext_sha256}\n" for i in ids)
    assert verified.report.dataset_commitment == hashlib.sha256(lines.encode()).hexdigest()


def test_the_estimate_gives_every_sites_budget_and_who_counts_as_one_person(world) -> None:
    maker, before = world["maker"], len(_events(world))
    estimate = maker.estimate_query("", Query(kind="count", epsilon=1.0), cohort=_sites(world["linked"]))
    assert estimate.epsilon == pytest.approx(1.0) and len(estimate.site_budgets) == 3
    assert all(b.fits and b.decision == "auto_approve" for b in estimate.site_budgets)
    assert "every site declared a linkage column" in estimate.linkage
    unlinked = maker.estimate_query("", Query(kind="count", epsilon=1.0), cohort=_sites(world["unlinked"]))
    assert "distinct privacy units" in unlinked.linkage
    assert len(_events(world)) == before


def test_a_cohort_linked_at_some_sites_only_says_so_in_the_estimate(world) -> None:
    names = [*world["linked"][:2], world["unlinked"][2]]
    estimate = world["maker"].estimate_query("", COUNT, cohort=_sites(names))
    assert estimate.linkage.startswith(f"patients are linked across {names[0]}, {names[1]} only; patients of {names[2]}")


def _key_releases(world) -> int:
    with world["running"].app.db.read() as session:
        return sum(1 for e in audit_repo.entries(session) if e.action == "broker.released")


def test_a_warm_cohort_worker_answers_again_without_new_key_releases_and_a_new_mapping_starts_another(world) -> None:
    maker, names = world["maker"], world["unlinked"]
    world["running"].app.stats_pool.reap(now=float("inf"))  # no warm worker left from earlier tests
    before = _key_releases(world)
    maker.run_query("", COUNT, cohort=_sites(names))
    assert _key_releases(world) == before + 3  # one release per hospital's dataset, each against its own quote
    maker.run_query("", MEAN, cohort=_sites(names))
    assert _key_releases(world) == before + 3  # the same attested worker
    remapped = [Site(n, {"radius": RADIUS[i], "gender": "sex"}) for i, n in enumerate(names)]
    maker.run_query("", Query(kind="count", group_by="gender", epsilon=1.0), cohort=remapped)
    assert _key_releases(world) == before + 6  # another mapping is another study table: its own worker


def test_a_retried_cohort_query_is_answered_once_and_charged_once(world) -> None:
    maker, sites = world["maker"], _sites(world["linked"])
    before = {e.spend_id for e in _events(world) if e.kind.value == "reserve"}
    first = maker.run_query("", COUNT, cohort=sites, request_id="cohort-retry-1")
    again = maker.run_query("", COUNT, cohort=sites, request_id="cohort-retry-1")
    assert again == first
    assert len({e.spend_id for e in _events(world) if e.kind.value == "reserve"} - before) == 1  # one spend (an event per site)


def test_a_site_short_of_budget_refuses_the_whole_query_naming_it_and_reserves_nothing(world) -> None:
    names = [*world["linked"][:2], world["poor"]]
    before, balances = len(_events(world)), _balances(world, names)
    with pytest.raises(CleanroomClientError) as refused:
        world["maker"].run_query("", Query(kind="count", epsilon=2.0), cohort=_sites(names))
    assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert world["poor"] in refused.value.message
    assert all(world["poor"] in v.field for v in refused.value.violations)
    assert len(_events(world)) == before and _balances(world, names) == balances


def test_above_the_auto_approve_threshold_every_sites_officer_decides_then_it_runs_once(world) -> None:
    maker, officer, names = world["maker"], world["officer"], world["linked"]
    query, sites = Query(kind="count", epsilon=60.0), _sites(names)
    with pytest.raises(CleanroomClientError) as waiting:
        maker.run_query("", query, cohort=sites)
    assert waiting.value.code is grpc.StatusCode.FAILED_PRECONDITION
    request = next(v.description for v in waiting.value.violations if v.field == "privacy_request")
    pending = [r for r in officer.pending_requests() if r.dataset in names and r.cost.epsilon == pytest.approx(60.0)]
    assert sorted(r.dataset for r in pending) == sorted(names)  # one row per hospital
    with pytest.raises(CleanroomClientError) as early:
        maker.run_query("", query, cohort=sites, privacy_request=request)
    assert early.value.code is grpc.StatusCode.FAILED_PRECONDITION
    for row in pending:
        officer.approve(row.name, "fine")
    answer = maker.run_query("", query, cohort=sites, privacy_request=request)
    assert answer.epsilon == pytest.approx(60.0)
    with pytest.raises(CleanroomClientError) as again:  # one approval, one answer
        maker.run_query("", query, cohort=sites, privacy_request=request)
    assert again.value.code is grpc.StatusCode.FAILED_PRECONDITION


def _refused(world, query: Query, sites: list[Site], code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
             dataset: str = "") -> CleanroomClientError:
    before = len(_events(world))
    with pytest.raises(CleanroomClientError) as refused:
        world["maker"].run_query(dataset, query, cohort=sites)
    assert refused.value.code is code
    assert len(_events(world)) == before  # nothing reserved, nothing charged
    return refused.value


COUNT = Query(kind="count", epsilon=1.0)
MEAN = Query(kind="mean", column="radius", bounds=(0.0, 40.0), epsilon=1.0)


def test_a_site_not_shared_with_the_caller_is_not_found_as_for_one_dataset(world) -> None:
    error = _refused(world, COUNT, _sites([*world["linked"][:2], world["unshared"]]), grpc.StatusCode.NOT_FOUND)
    missing = _refused(world, COUNT, _sites([*world["linked"][:2], "datasets/nope"]), grpc.StatusCode.NOT_FOUND)
    assert error.message == missing.message and world["unshared"] not in error.message


def test_a_study_column_a_site_lacks_is_refused_naming_the_site(world) -> None:
    sites = _sites(world["linked"])
    sites[1] = Site(world["linked"][1], {"radius": "no_such_column"})
    error = _refused(world, MEAN, sites)
    assert [v.field for v in error.violations] == ["cohort[1].columns"] and world["linked"][1] in error.violations[0].description


def test_mapped_columns_of_different_types_are_refused_naming_both_sites(world) -> None:
    sites = _sites(world["linked"])
    sites[1] = Site(world["linked"][1], {"radius": "sex"})  # text at the second hospital
    error = _refused(world, MEAN, sites)
    text = " ".join(v.description for v in error.violations)
    assert world["linked"][0] in text and world["linked"][1] in text


def test_group_keys_declared_differently_are_refused_naming_both_sites(world) -> None:
    names = [world["linked"][0], world["odd_keys"]]
    error = _refused(world, Query(kind="count", group_by="sex", epsilon=1.0), _sites(names))
    text = " ".join(v.description for v in error.violations)
    assert names[0] in text and names[1] in text


@pytest.mark.parametrize("study", ["rrn", "patient_id"])
def test_the_linkage_and_patient_columns_are_never_query_columns_even_mapped(world, study: str) -> None:
    names = world["linked"]
    _refused(world, Query(kind="histogram", column=study, epsilon=1.0), _sites(names))
    mapped = [Site(n, {"who": study} | ({"radius": RADIUS[i]} if i == 1 else {})) for i, n in enumerate(names)]
    error = _refused(world, Query(kind="count", group_by="who", epsilon=1.0, delta=1e-6), mapped)
    assert "cannot be queried" in " ".join(v.description for v in error.violations)


def test_a_request_names_a_dataset_or_a_cohort_of_two_or_more(world) -> None:
    names = world["linked"]
    both = _refused(world, COUNT, _sites(names), dataset=names[0])
    assert [v.field for v in both.violations] == ["cohort"]
    alone = _refused(world, COUNT, _sites(names[:1]))
    assert [v.field for v in alone.violations] == ["cohort"]
    twice = _refused(world, COUNT, _sites([names[0], names[0]]))
    assert twice.violations[0].field.startswith("cohort[1]")


def _cli(world, *args: str) -> list[str]:
    sites = [a for i, n in enumerate(world["linked"]) for a in ("--site", n + (f",radius={RADIUS[i]}" if RADIUS[i] != "radius" else ""))]
    return ["--server", world["running"].address, "--token", world["maker_token"], "stats", *args, *sites]


def test_the_cli_takes_one_site_flag_per_hospital(world, capsys, tmp_path) -> None:
    assert cli.main(_cli(world, "count", "--epsilon", str(EXACT), "--where", "radius >= 15")) == 0
    table = capsys.readouterr().out
    assert "cohort of 3 sites" in table and all(n in table for n in world["linked"])
    assert cli.main(_cli(world, "count", "--epsilon", str(EXACT), "--where", "radius >= 15", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["cells"][0]["value"] == 3 * SINGLES // 2 + 1  # 15..19 at every site, and the planted 20
    assert cli.main(_cli(world, "mean", "--column", "radius", "--bounds", "0", "40", "--epsilon", "1", "--dry-run")) == 0
    dry = capsys.readouterr().out
    assert "every site declared a linkage column" in dry and all(n in dry for n in world["linked"])
    root = tmp_path / "root.pem"
    root.write_bytes(world["running"].app.enclave.root.public_key_pem())
    assert cli.main(_cli(world, "count", "--epsilon", "0.5", "--root-pem", str(root))) == 0
    assert "receipt verified" in capsys.readouterr().out
    assert cli.main(_cli(world, "count", world["linked"][0], "--epsilon", "0.5")) == 2  # DATASET and --site
    assert "either DATASET or one --site" in capsys.readouterr().err


@pytest.mark.postgres
def test_on_postgresql_a_cohort_query_charges_every_site_or_none(tmp_path, postgres_url) -> None:
    running = start_server(make_config(tmp_path / "state", work_dir=tmp_path / "work", database_url=postgres_url))
    try:
        maker_id, maker_token = running.principal(Role.MANUFACTURER)
        officer = running.client(running.principal(Role.PRIVACY_OFFICER)[1])
        names = []
        for site, share in enumerate((500.0, 500.0, 1.0)):
            owner = running.client(running.principal(Role.DATA_OWNER)[1])
            _write(tmp_path / f"h{site}.csv", site)
            name = owner.upload_dataset(tmp_path / f"h{site}.csv", _schema(site, linked=True)).name
            officer.set_budget(name, epsilon=1000, delta=1e-3, reason="study")
            officer.share_dataset(name, f"principals/{maker_id}", epsilon=share, delta=1e-3, reason="study")
            officer.set_approval_policy(name, max_epsilon=100, auto_approve_epsilon=50, reason="study")
            names.append(name)
        maker = running.client(maker_token)
        assert maker.run_query("", Query(kind="count", epsilon=EXACT), cohort=_sites(names[:2])).cells[0].value == 2 * SINGLES + 1
        with running.app.db.read() as session:
            before = privacy_repo.events(session)
        with pytest.raises(CleanroomClientError) as refused:
            maker.run_query("", Query(kind="count", epsilon=2.0), cohort=_sites(names))
        assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED and names[2] in refused.value.message
        with running.app.db.read() as session:
            assert privacy_repo.events(session) == before  # nothing reserved on the two sites that had budget
    finally:
        running.server.stop(grace=0)
        running.app.close()
