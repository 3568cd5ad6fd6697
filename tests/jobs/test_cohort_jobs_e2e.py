"""Cohort jobs end to end over gRPC: three hospitals' datasets (each naming the study's columns its
own way) in one training job with a held-out site, released with a verifiable receipt and charged
to every site alike; every bad cohort request refused before any reservation."""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

import enclave_sim
from cleanroom.cli import samples
from cleanroom.datasets.deidentify import LinkagePseudonymizer
from cleanroom.domain.cohort import cohort_key
from cleanroom.domain.identity import Role
from cleanroom.sdk import CleanroomClientError
from cleanroom.sdk.cohort import Site
from cleanroom.sdk.schema import Schema
from cleanroom.sdk.verify import verify_job
from cleanroom.statistics.engine import Query
from cleanroom.storage import privacy_repo
from cleanroom.storage.tables import JobRow, LedgerEventRow, PrivacyRequestRow, SpendRow
from cleanroom.v1 import datasets_pb2, jobs_pb2
from tests.conftest import make_config, start_server
from tests.jobs.study import EXAMPLE, FEATURES
from tests.tools import needs

pytestmark = needs("bwrap")  # the server's sandboxes (tests/tools.py)

# How each hospital names two of the study's columns (the study's names are the first hospital's).
RENAMED = ({}, {"mean_radius": "radius_mean", "malignant": "dx"}, {"mean_texture": "texture_avg", "malignant": "is_malignant"})
SHARE_EPSILON = (5.0, 5.0, 1.2)
SHARED = 20  # patients of the first hospital also treated at the second, linked by their RRN  # the third hospital's share leaves room for one ε = 1 job only


def _write_site(rows: list[list[str]], header: list[str], renamed: dict[str, str], path: Path, *, extra: bool) -> Path:
    """One hospital's file: its rows under its own column names; `extra` adds an integer column."""
    rng = random.Random(path.name)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([renamed.get(n, n) for n in header] + (["n_nodes"] if extra else []))
        for row in rows:
            writer.writerow(row + ([str(rng.randrange(4))] if extra else []))
    return path


def _schema(renamed: dict[str, str], *, extra: bool = False, label_classes: int = 2, links: bool = False) -> Schema:
    columns = []
    for spec in samples.breast_cancer_schema():
        copy = datasets_pb2.ColumnSpec()
        copy.CopyFrom(spec)
        copy.name = renamed.get(spec.name, spec.name)
        if spec.role == datasets_pb2.LABEL:
            copy.label_classes = label_classes
        if spec.name == "rrn" and links:
            copy.role = datasets_pb2.LINKAGE_ID
        columns.append(copy)
    if extra:
        columns.append(datasets_pb2.ColumnSpec(name="n_nodes", type=datasets_pb2.INTEGER, role=datasets_pb2.FEATURE))
    return Schema(columns, 5)


def _site_rows(rows: list[list[str]], index: int) -> list[list[str]]:
    """A third of the patients each; the second hospital also treated SHARED of the first's patients
    (the same person and resident registration number, its own patient id)."""
    own = rows[index::3]
    if index != 1:
        return own
    return own + [[f"SMC-{row[0]}", *row[1:]] for row in rows[0::3][:SHARED]]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("cohort")
    running = start_server(make_config(base / "state", work_dir=base / "work"))
    maker_id, maker_token = running.principal(Role.MANUFACTURER)
    _, officer_token = running.principal(Role.PRIVACY_OFFICER)  # the operator's: governs every hospital
    owners = [running.client(running.principal(Role.DATA_OWNER)[1]) for _ in range(3)]
    maker, officer = running.client(maker_token), running.client(officer_token)
    with samples.write_breast_cancer_csv(base / "all.csv").open() as source:
        header, *rows = list(csv.reader(source))
    try:
        datasets = []
        for index, (owner, renamed) in enumerate(zip(owners, RENAMED, strict=True)):
            path = _write_site(_site_rows(rows, index), header, renamed, base / f"site{index}.csv", extra=index == 2)
            datasets.append(owner.upload_dataset(path, _schema(renamed, extra=index == 2, links=index < 2), display_name=f"hospital {index + 1}"))
        # The third hospital's file again, declaring three label classes: a label domain no other site shares.
        datasets.append(owners[2].upload_dataset(base / "site2.csv", _schema(RENAMED[2], extra=True, label_classes=3),
                                                 display_name="hospital 3, three classes"))
        for dataset, share in zip(datasets, (*SHARE_EPSILON, 5.0), strict=True):
            officer.set_budget(dataset.name, epsilon=6, delta=1e-4, reason="total")
            officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=share, delta=1e-4, reason="study")
            officer.set_approval_policy(dataset.name, max_epsilon=3, auto_approve_epsilon=1.5, reason="routine")
        # A fifth dataset, never shared with the manufacturer.
        hidden = owners[0].upload_dataset(base / "site0.csv", _schema({}), display_name="not shared")
        model = maker.submit_model(EXAMPLE)
        yield {"running": running, "maker": maker, "maker_token": maker_token, "officer": officer, "datasets": [d.name for d in datasets],
               "patients": [d.patient_count for d in datasets], "hidden": hidden.name, "model": model.name, "owners": owners,
               "rrns": sorted({row[header.index("rrn")] for row in rows})}
    finally:
        for client in (*owners, maker, officer):
            client.close()
        running.server.stop(grace=0)


def _sites(world, roles: tuple[str, ...] = ("train", "train", "validate")) -> list[Site]:
    return [Site(name, RENAMED[i], role) for i, (name, role) in enumerate(zip(world["datasets"][:3], roles, strict=True))]


def _training(world, sites: list[Site] | None = None, epsilon: float = 1.0, **changes: Any) -> jobs_pb2.TrainingSpec:
    spec = jobs_pb2.TrainingSpec(model=world["model"], feature_columns=FEATURES, label_column="malignant", target_epsilon=epsilon,
                                 target_delta=1e-5, epochs=2, expected_batch_patients=48, learning_rate=0.1, optimizer="sgd",
                                 clipping_norm=1.0, validation_fraction=0.2)
    spec.cohort.extend(site.to_proto() for site in (_sites(world) if sites is None else sites))
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def _ledger_state(world) -> tuple[int, ...]:
    """Ledger events, spends, privacy requests, jobs and balances so far: a refused request changes none."""
    with world["running"].app.db.read() as session:
        counts = tuple(session.scalar(select(func.count()).select_from(table)) or 0
                       for table in (LedgerEventRow, SpendRow, PrivacyRequestRow, JobRow))
        balances = sorted((budget_id, str(b)) for budget_id, b in privacy_repo.all_balances(session).items())
    return (*counts, hash(tuple(balances)))


def _refused(world, spec, code=grpc.StatusCode.INVALID_ARGUMENT, evaluate: bool = False) -> dict[str, str]:
    before = _ledger_state(world)
    with pytest.raises(CleanroomClientError) as err:
        (world["maker"].evaluate if evaluate else world["maker"].train)(spec)
    assert err.value.code is code, err.value
    assert _ledger_state(world) == before  # nothing reserved
    return {v.field: v.description for v in err.value.violations}


def test_a_three_site_training_with_a_held_out_site_is_released_charged_to_each_site_and_verifiable(world) -> None:
    maker, spec = world["maker"], _training(world)
    job = maker.train(spec)
    assert job.state == jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JobState.Name(job.state)  # every site's policy auto-approves ε = 1
    assert job.training.dataset == "" and [s.dataset for s in job.training.cohort] == world["datasets"][:3]
    assert job.linkage == ("patients are linked across hospital 1, hospital 2 only; patients of hospital 3 are distinct "
                           "privacy units, bounded separately")
    done = maker.wait_job(job.name, timeout=600)
    assert done.state == jobs_pb2.JOB_STATE_RELEASED, jobs_pb2.JobFailure.Name(done.failure)
    files = maker.download_all(done)
    assert {"weights.safetensors", "receipt.json", "metrics.json"} <= set(files)
    app = world["running"].app
    verified = verify_job(done, files, package_directory=EXAMPLE, pinned_root_pem=app.enclave.root.public_key_pem(),
                          allowed_measurements=[app.enclave.measurement], spec=spec)
    assert verified.report.workload == done.workload
    with pytest.raises(enclave_sim.VerificationError):  # the same request over other sites is another workload
        verify_job(done, files, package_directory=EXAMPLE, pinned_root_pem=app.enclave.root.public_key_pem(),
                   allowed_measurements=[app.enclave.measurement], spec=_training(world, _sites(world, ("train", "validate", "validate"))))
    assert cohort_key(d.removeprefix("datasets/") for d in world["datasets"][:3]).startswith("cohort-")
    committed = []
    for name in world["datasets"][:3]:
        commits = [e for e in world["officer"].ledger(dataset=name) if e.kind == "commit"]
        assert len(commits) == 1, name
        committed.append(commits[0].amount.epsilon)
        assert all(name.removeprefix("datasets/") in b for b in commits[0].budgets)  # each hospital's part only
    assert committed[0] > 0 and committed == [committed[0]] * 3
    assert committed[0] <= 1.0 + 1e-9 and abs(committed[0] - float(verified.report.epsilon_spent)) < 1e-6
    # No linkage pseudonym in anything the manufacturer reads: the job, its artefacts, its receipt.
    assert all(b"lnk-" not in data for data in files.values()) and "lnk-" not in str(done)


def test_budget_short_on_one_site_refuses_the_whole_cohort_and_names_that_site(world) -> None:
    """ε = 1.4 fits the first two hospitals' shares (5) but not the third's (1.2, or less once spent)."""
    third = world["datasets"][2].removeprefix("datasets/")
    fields = _refused(world, _training(world, epsilon=1.4), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert fields and all(third in budget for budget in fields), fields


@pytest.mark.parametrize("case", ["unmapped", "not-a-study-column", "type", "label-domain", "no-train-site", "delta", "both", "neither",
                                  "twice", "role"])
def test_bad_cohort_requests_are_refused_before_any_reservation(world, case) -> None:
    sites = _sites(world)
    d = world["datasets"]
    spec: Any
    if case == "unmapped":  # the second hospital calls it radius_mean: left out, the study's name is not there
        sites[1] = Site(d[1], {"malignant": "dx"})
        field, words = "spec.cohort[1].columns[mean_radius]", "no such column"
    elif case == "not-a-study-column":
        sites[0] = Site(d[0], {"tumour_size": "mean_area"})
        field, words = "spec.cohort[0].columns[tumour_size]", "not a feature or label"
    elif case == "type":  # an INTEGER column where the other sites give the study's FLOAT
        sites[2] = Site(d[2], {**RENAMED[2], "mean_radius": "n_nodes"}, "validate")
        field, words = "spec.cohort[2].columns[mean_radius]", "INTEGER at " + d[2]
    elif case == "label-domain":
        sites[2] = Site(d[3], RENAMED[2], "validate")
        field, words = "spec.cohort[2].columns[malignant]", "3 classes"
    elif case == "no-train-site":
        sites = [Site(s.dataset, s.columns, "validate") for s in sites]
        field, words = "spec.cohort", "at least one TRAIN site"
    if case == "delta":
        spec, field, words = _training(world, target_delta=1e-3), "spec.target_delta", "patient count"
    elif case == "both":
        spec, field, words = _training(world, dataset=d[0]), "spec.cohort", "spec.dataset"
    elif case == "neither":
        spec, field, words = _training(world, sites=[]), "spec.dataset", "required"
    elif case == "twice":
        spec, field, words = _training(world, [*sites, sites[0]]), "spec.cohort[3].dataset", "named twice"
    elif case == "role":  # a role number this server does not know
        spec, field, words = _training(world), "spec.cohort[1].role", "one of"
        spec.cohort[1].role = 7
    else:
        spec = _training(world, sites)
    fields = _refused(world, spec)
    assert field in fields and words in fields[field], fields


def test_a_site_not_shared_with_the_maker_is_not_found_like_a_missing_dataset(world) -> None:
    sites = _sites(world)
    hidden = _refused(world, _training(world, [*sites[:2], Site(world["hidden"], {}, "validate")]), grpc.StatusCode.NOT_FOUND)
    missing = _refused(world, _training(world, [*sites[:2], Site("datasets/dnothere", {}, "validate")]), grpc.StatusCode.NOT_FOUND)
    assert hidden == missing == {}


def test_an_evaluation_over_sites_checks_them_the_same_way(world) -> None:
    spec = jobs_pb2.EvaluationSpec(model=world["model"], feature_columns=FEATURES, label_column="malignant",
                                   target_epsilon=0.5, target_delta=1e-5)
    spec.cohort.extend(site.to_proto() for site in [*_sites(world)[:2], Site(world["datasets"][3], RENAMED[2], "validate")])
    fields = _refused(world, spec, evaluate=True)
    assert "label domains differ" in fields["spec.cohort[2].columns[malignant]"]


def _evaluation(world, sites: list[Site], epsilon: float) -> jobs_pb2.EvaluationSpec:
    spec = jobs_pb2.EvaluationSpec(model=world["model"], feature_columns=FEATURES, label_column="malignant",
                                   target_epsilon=epsilon, target_delta=1e-5)
    spec.cohort.extend(site.to_proto() for site in sites)
    return spec


def _group_rows(world, job: jobs_pb2.Job) -> list[Any]:
    return [r for r in world["officer"].pending_requests() if r.reference == job.name]


def test_a_cohort_evaluation_above_auto_approval_waits_for_every_site_then_runs_and_verifies(world) -> None:
    """ε = 2 is above each hospital's auto-approve threshold: one request per site waits for its
    officer; the job is queued only once both are approved (the group's one spend reserved)."""
    maker, officer = world["maker"], world["officer"]
    spec = _evaluation(world, _sites(world, ("train", "validate", "validate"))[:2], epsilon=2.0)
    job = maker.evaluate(spec)
    assert job.state == jobs_pb2.JOB_STATE_PENDING_APPROVAL
    rows = _group_rows(world, job)
    assert sorted(r.dataset for r in rows) == sorted(world["datasets"][:2]) and {r.group for r in rows} == {job.privacy_request}
    officer.approve(rows[0].name, reason="first hospital agrees")
    world["running"].app.runner.promote_decided()
    assert maker.get_job(job.name).state == jobs_pb2.JOB_STATE_PENDING_APPROVAL  # the other hospital has not decided
    officer.approve(rows[1].name, reason="second hospital agrees")
    done = maker.wait_job(job.name, timeout=600)
    assert done.state == jobs_pb2.JOB_STATE_RELEASED, jobs_pb2.JobFailure.Name(done.failure)
    files = maker.download_all(done)
    app = world["running"].app
    verified = verify_job(done, files, package_directory=EXAMPLE, pinned_root_pem=app.enclave.root.public_key_pem(),
                          allowed_measurements=[app.enclave.measurement], spec=spec)
    assert verified.report.accountant == "zcdp-rdp" and float(verified.report.epsilon_spent) <= 2.0 + 1e-9
    assert b"hospital 2" in files["metrics.json"] or b"hospital 2" in files["report.html"]  # reported by site


def test_a_rejection_at_one_site_rejects_the_cohort_job_and_reserves_nothing(world) -> None:
    maker, officer = world["maker"], world["officer"]
    before = _ledger_state(world)[0]
    job = maker.train(_training(world, _sites(world)[:2], epsilon=2.0))
    assert job.state == jobs_pb2.JOB_STATE_PENDING_APPROVAL
    rows = _group_rows(world, job)
    officer.reject(rows[-1].name, reason="not for this study")
    world["running"].app.runner.promote_decided()
    assert maker.get_job(job.name).state == jobs_pb2.JOB_STATE_REJECTED
    assert _ledger_state(world)[0] == before  # no ledger event: nothing was ever reserved


def test_the_cli_submits_a_cohort_with_sites_shows_it_and_verifies_its_receipt(world, tmp_path, capsys) -> None:
    from cleanroom.cli import main as cli

    running = world["running"]
    connection = ["--server", running.address, "--token", world["maker_token"]]
    root = tmp_path / "root.pem"
    assert cli.main([*connection, "trust", "show", "--pem"]) == 0
    root.write_text(capsys.readouterr().out)
    d = world["datasets"]
    common = [*connection, "job", "evaluate", "--model", world["model"], "--features", ",".join(FEATURES), "--label", "malignant",
              "--epsilon", "0.1"]
    sites = ["--site", d[0], "--site", f"{d[1]},mean_radius=radius_mean,malignant=dx",
             "--site", f"{d[2]}:validate,mean_texture=texture_avg,malignant=is_malignant"]
    assert cli.main([*common, "--dataset", d[0], *sites[:2]]) == 2  # a dataset and sites: one or the other
    assert "either --dataset or one --site" in capsys.readouterr().err
    assert cli.main([*common, *sites, "--wait"]) == 0
    out = capsys.readouterr().out
    name = out.split(":", 1)[0]
    assert name.startswith("jobs/") and out.rstrip().endswith("released") and "linkage: " in out
    assert cli.main([*connection, "job", "show", name]) == 0
    shown = capsys.readouterr().out
    assert f"site              {d[2]} validate (held out): malignant=is_malignant, mean_texture=texture_avg" in shown
    assert cli.main([*connection, "job", "download", name, "--to", str(tmp_path / "files"), "--package", str(EXAMPLE),
                     "--root-pem", str(root)]) == 0
    assert '"verified": true' in capsys.readouterr().out


def test_cancelling_a_pending_cohort_job_withdraws_its_request_at_every_site(world) -> None:
    maker = world["maker"]
    job = maker.train(_training(world, _sites(world)[:2], epsilon=2.0))
    assert len(_group_rows(world, job)) == 2
    assert maker.cancel_job(job.name).state == jobs_pb2.JOB_STATE_CANCELLED
    assert _group_rows(world, job) == []  # neither hospital's officer is left with it


def test_a_job_cancelled_after_its_last_approval_but_before_it_was_queued_gives_its_reservation_back(world) -> None:
    """The race between a maker's cancel and the officers' last approval: with the runner paused, the
    group is approved (its spend reserved) while the job still reads as pending; the cancel must
    refund that spend, or the budget would stay reserved for a job that never runs."""
    maker, officer, runner = world["maker"], world["officer"], world["running"].app.runner
    runner.stop()
    try:
        job = maker.train(_training(world, _sites(world)[:2], epsilon=1.6))  # above both sites' auto-approval
        for row in _group_rows(world, job):
            officer.approve(row.name, reason="both hospitals agree")
        with world["running"].app.db.read() as session:
            spend_id = privacy_repo.get_request(session, job.privacy_request.removeprefix("privacyRequests/")).spend_id
            assert spend_id is not None and privacy_repo.get_spend(session, spend_id).state.value == "reserved"
        assert maker.cancel_job(job.name).state == jobs_pb2.JOB_STATE_CANCELLED
        with world["running"].app.db.read() as session:
            spend = privacy_repo.get_spend(session, spend_id)
        assert spend is not None and spend.state.value == "refunded" and not spend.decrypted
    finally:
        runner.start()


def _everything_readable(world) -> list[str]:
    """Every response a manufacturer or a hospital can read after the jobs above: datasets and intake
    reports, jobs and their artefacts, cohort statistics and their estimate, the hospitals' audit
    exports; and the operator's ledger, budgets and requests, for good measure."""
    maker, officer, owners = world["maker"], world["officer"], world["owners"]
    # A job of its own, so the scan reads a released cohort job whatever ran before it.
    own = maker.train(_training(world, _sites(world, ("train", "validate", "validate"))[:2], epsilon=0.3))
    assert maker.wait_job(own.name, timeout=600).state == jobs_pb2.JOB_STATE_RELEASED
    seen: list[str] = []
    seen += [str(d) for d in maker.list_datasets()] + [str(maker.get_dataset(n)) for n in world["datasets"]]
    seen += [str(m) for m in maker.list_models()]
    for job in maker.list_jobs():
        seen.append(str(maker.get_job(job.name)))
        if job.state == jobs_pb2.JOB_STATE_RELEASED:
            seen += [data.decode("utf-8", "replace") for data in maker.download_all(job).values()]
    cohort = _sites(world)[:2]  # the third site's share is spent by the jobs above
    query = Query(kind="count", epsilon=0.05)
    seen += [str(maker.estimate_query("", query, cohort=cohort)), str(maker.run_query("", query, cohort=cohort))]
    for owner in owners:
        seen += [str(d) for d in owner.list_datasets()] + list(owner.export_audit_log())
    seen += [str(e) for e in officer.ledger()] + [str(officer.get_budgets(n)) for n in world["datasets"]]
    seen += [str(r) for r in officer.pending_requests()] + list(officer.export_audit_log())
    return seen


def test_no_linkage_pseudonym_or_identifier_reaches_anyone_outside_the_service(world) -> None:
    """The linkage pseudonyms of every RRN in the study, computed with the service's own key, and the
    RRNs themselves: none is in any response or artefact a manufacturer or a hospital reads."""
    pseudonymise = LinkagePseudonymizer(world["running"].app.keys.linkage_key())._digest
    secrets = {pseudonymise(rrn) for rrn in world["rrns"]} | set(world["rrns"])
    assert len(secrets) == 2 * len(world["rrns"]) and all(s.startswith("lnk-") for s in map(pseudonymise, world["rrns"]))
    readable = "\n".join(_everything_readable(world))
    # The scan read real material: a released job's report, a cohort answer, the hospitals' audit entries.
    assert '"auroc"' in readable and "cohort" in readable and "ledger.commit" in readable
    leaked = sorted(s for s in secrets if s in readable)
    assert leaked == [], f"{len(leaked)} linkage pseudonyms or identifiers reached a reader"
    assert "lnk-" not in readable
