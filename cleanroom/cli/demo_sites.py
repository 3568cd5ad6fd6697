"""The demo's three-hospital study: two hospitals train, the third validates externally.

Each hospital is its own organisation with its own data team and privacy officer. The first two
declare the resident registration number as a linkage column, so a patient treated at both is one
privacy unit (the sample data plants such patients); the third links nothing and names its columns
its own way. The manufacturer asks for one cohort fine-tune; each hospital's policy decides its part
(one hospital wants an officer to look first), and the job's DP validation report gives the held-out
hospital's metrics with intervals and says which hospital the model never saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.cli import jobs as cli_jobs
from cleanroom.cli import render, samples
from cleanroom.cli import stats as cli_stats
from cleanroom.sdk import CleanroomClientError, Client, Site
from cleanroom.sdk.schema import Schema
from cleanroom.sdk.verify import verify_job
from cleanroom.statistics.engine import Query
from cleanroom.v1 import datasets_pb2, jobs_pb2

STUDY_EPSILON, STUDY_DELTA = 1.0, 1e-5


@dataclass(frozen=True)
class Member:
    """One hospital of the study: its dataset, its officer, and the part it plays."""

    hospital: samples.Hospital
    dataset: datasets_pb2.Dataset
    officer_token: str
    role: str  # "train" or "validate"

    def site(self) -> Site:
        return Site(self.dataset.name, self.hospital.renamed, self.role)


def three_hospital_study(address: str, admin_token: str, maker: Client, model: str, workdir: Path, pinned_root: bytes,
                         save_report: Any, example_model: Path) -> None:
    """`maker` is the manufacturer's client; `save_report(title, epsilon, files)` keeps the HTML report."""
    from cleanroom.cli.demo import step, upload

    step("Three hospitals, one study: each hospital is an organisation with its own data team and privacy officer")
    roles = ("train", "train", "validate")
    paths = samples.write_hospital_csvs(workdir)
    maker_name = maker.whoami().name
    sites = []
    with Client(address, admin_token) as admin:
        for hospital, path, role in zip(samples.HOSPITALS, paths, roles, strict=True):
            organisation = admin.create_organisation(hospital.name, "hospital")
            team = admin.create_principal(f"{hospital.prefix} data team", "data_owner", organisation=organisation.name)
            officer = admin.create_principal(f"{hospital.prefix} privacy office", "privacy_officer", organisation=organisation.name)
            with Client(address, team.token) as owner:
                dataset = upload(owner, path, Schema(samples.hospital_schema(hospital), k_anonymity=5), f"breast-cancer-{hospital.prefix.lower()}")
            linkage = "RRN declared as the linkage column" if hospital.links else "no linkage column: its patients stay its own"
            print(f"{hospital.name}: {dataset.name}, {dataset.patient_count} patients; {linkage}")
            sites.append(Member(hospital, dataset, officer.token, role))
    print(f"{samples.SHARED_PATIENTS} patients of {samples.HOSPITALS[0].name} were also treated at {samples.HOSPITALS[1].name} "
          "(same RRN): intake gave them the same linkage pseudonym, which nobody outside the service can compute or see")

    step("Each hospital's officer shares its dataset with the manufacturer, under its own policy")
    for number, site in enumerate(sites):
        auto = 0.5 if number == 1 else 3.0  # the second hospital wants to look at anything above ε = 0.5
        with Client(address, site.officer_token) as office:
            office.set_budget(site.dataset.name, epsilon=8.0, delta=1e-4, reason="hospital-wide limit")
            office.share_dataset(site.dataset.name, maker_name, epsilon=4.0, delta=1e-4, reason="multi-site study 2026-201")
            office.set_approval_policy(site.dataset.name, max_epsilon=3.0, auto_approve_epsilon=auto, max_delta=1e-5,
                                        reason=f"study jobs up to ε={auto:g} auto-approved")
        print(f"{site.hospital.name}: budget ε=8, share ε=4, auto-approve up to ε={auto:g}")
    _isolation(address, sites)

    spec = jobs_pb2.TrainingSpec(model=model, feature_columns=samples.feature_names(), label_column="malignant",
                                 target_epsilon=STUDY_EPSILON, target_delta=STUDY_DELTA)
    step(f"Manufacturer: one fine-tune at ε={STUDY_EPSILON:g} on the first two hospitals, validated on the third "
         "(its columns mapped onto the study's names)")
    job = maker.train(spec, cohort=[s.site() for s in sites])
    print(job.linkage)
    print(f"{job.name}: {cli_jobs.state_name(job)}")
    _decide(address, sites)
    done = maker.wait_job(job.name, timeout=900)
    print(f"{done.name}: {cli_jobs.state_name(done)}")
    files = maker.download_all(done)
    bundle = maker.trust_bundle()
    verify_job(done, files, package_directory=example_model, pinned_root_pem=pinned_root, allowed_measurements=bundle.allowed_measurements, spec=spec)
    print("receipt verified: signature chain to the pinned root, measurement, the cohort's workload, file digests, ε recomputed")
    _print_sites(json.loads(files["metrics.json"]))
    report = save_report("three-hospital fine-tune", STUDY_EPSILON, files)
    if report is not None:
        print(f"HTML report: {report}")

    cohort = [s.site() for s in sites]
    step("Manufacturer: DP statistics over the cohort (a linked patient counts once, under one per-person bound)")
    print(cli_stats.render_answer(maker.run_query("", Query(kind="count", epsilon=0.2), cohort=cohort)))
    step("Manufacturer: the mean tumour radius across the three hospitals (each names the column its own way)")
    print(cli_stats.render_answer(maker.run_query("", Query(kind="mean", column="mean_radius", bounds=(5.0, 30.0), epsilon=0.3),
                                                  cohort=cohort)))

    step("Each hospital's ledger holds its own part of the study, charged the same ε")
    for site in sites:
        with Client(address, site.officer_token) as office:
            print(f"{site.hospital.name}:")
            print(render.budget_table(office.get_budgets(site.dataset.name)))


def _isolation(address: str, sites: list[Member]) -> None:
    from cleanroom.cli.demo import step

    step("Isolation: one hospital's officer cannot see another hospital's dataset (it is absent, not forbidden)")
    with Client(address, sites[2].officer_token) as office:
        try:
            office.get_budgets(sites[0].dataset.name)
        except CleanroomClientError as error:
            print(error)


def _decide(address: str, sites: list[Member]) -> None:
    """Every hospital's officer sees only its own part of the request; the second approves."""
    for site in sites:
        with Client(address, site.officer_token) as office:
            pending = list(office.pending_requests())
            print(f"{site.hospital.name} officer: {len(pending)} part(s) waiting for this hospital")
            for request in pending:
                office.approve(request.name, reason="protocol reviewed: external validation at a third site")
                print(f"  approved {request.name}: ε={request.cost.epsilon:g} on {request.dataset}")


def _print_sites(metrics: dict[str, Any]) -> None:
    evaluation, cohort = metrics.get("evaluation", {}), metrics.get("cohort", {})
    for statement in (cohort.get("never_seen_statement"), cohort.get("linkage")):
        if statement:
            print(statement)
    rows = []
    # Several evaluated sites: pooled and each site; one held-out site: its own result is the whole evaluation.
    overall = "pooled" if evaluation.get("sites") else ", ".join(cohort.get("never_seen", [])) or "held-out patients"
    for name, part in [(overall, evaluation), *((s.get("name", "?"), s) for s in evaluation.get("sites", []))]:
        entry = part.get("metrics", {}).get("auroc")
        if entry:
            rows.append((name, f"{entry['value']:.3f} [{entry['ci95'][0]:.2f}, {entry['ci95'][1]:.2f}]"))
    if rows:
        print(render.table(("validation", "DP AUROC [95% interval]"), rows))
