"""The demo's wellness-stream study: a sleep clinic's overnight wristband readings, a windowed DP
fine-tune of a 1-D CNN, its validation per window and per patient, and a DP statistic over the stream.

A sleep clinic (its own organisation, data team and privacy officer) uploads one generated night
(12 h from about 20:00) of heart rate, SpO2 and step cadence for each of 300 patients
(cleanroom/cli/stream_samples.py). They were referred for suspected sleep apnoea, so 40% of them
have nocturnal desaturation episodes: in the generator's default wellness population (15%) a
10-minute window is positive about 3% of the time, and at the demo's size the DP noise on the
held-out windows would swamp so few positives (measured: BENCHMARKS.md; bench/streams.py trains
on the wellness population at 10 GB, for memory rather than utility). Intake pseudonymises the patient, drops the device serial and shifts each patient's
times by a secret whole number of days. The manufacturer sees only the stream's public
description, submits examples/wellness-cnn1d, and trains it on 10-minute windows labelled by a
rule over SpO2 ("below 90 for 30 s"): patients are sampled, at most a few windows each per step,
each patient's gradient clipped as a whole. The held-out patients' DP report gives the metrics
per window and per patient. Then the time each patient's SpO2 spent in 90-100% (the complement of
the clinic's T90), averaged per age group through a stream view, with its receipt; and a window
longer than any patient's stream, refused before any budget moves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.cli import jobs as cli_jobs
from cleanroom.cli import models as cli_models
from cleanroom.cli import render, stream_samples
from cleanroom.cli import stats as cli_stats
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.sdk.schema import parse_schema
from cleanroom.sdk.stats import signed_stream_view, stream_view, verify_answer
from cleanroom.sdk.streams import window_spec
from cleanroom.sdk.verify import verify_job
from cleanroom.statistics.engine import Query
from cleanroom.v1 import datasets_pb2, jobs_pb2

CNN_MODEL = Path(__file__).resolve().parents[2] / "examples" / "wellness-cnn1d"
# 400 patients x one night of readings every 5 s: ~3.3 million readings, ~200 MB of CSV.
SIZE = stream_samples.StreamSize(patients=400, days=0.5, seconds_per_reading=5, condition_share=0.4,
                                 start_hours=(20.0, 21.5))
CHANNELS = [name for name, _ in stream_samples.CHANNELS]
LABEL_RULE = "spo2 below 90 for 30"
WINDOW, STRIDE, RESAMPLE = 600, 300, 5  # 10-minute windows every 5 minutes, 5 s cells: the model's (3, 120)
EPSILON, DELTA = 3.0, 1e-5
# Tried on the generated stream (as in tests/examples): 10 epochs of expected batch 32 patients,
# at most 4 windows each per step, Adam at 0.01; half of the patients held out for validation. The
# per-window report's noise grows with the windows a patient may give (its sensitivity): at 16 and
# 90 held-out patients the positive windows could not be told from the noise at ε = 2, and every
# interval was the whole range.
WINDOWS_PER_PATIENT = 4


@dataclass(frozen=True)
class Clinic:
    dataset: datasets_pb2.Dataset
    officer_token: str


def stream_study(address: str, admin_token: str, maker: Client, workdir: Path, pinned_root: bytes,
                 save_report: Callable[[str, float, dict[str, bytes]], Path | None]) -> None:
    """`maker` is the manufacturer's client; `save_report(title, epsilon, files)` keeps the HTML report."""
    from cleanroom.cli.demo import step

    step("Wellness-IoT streams: a sleep clinic's overnight wristband readings (heart rate, SpO2, steps), one row per reading")
    clinic = _clinic(address, admin_token, maker.whoami().name, workdir)
    step("Manufacturer: sees the stream's public description (no readings, no patient count beyond the schema's)")
    print(render.stream_description(maker.get_dataset(clinic.dataset.name)))
    step("Manufacturer submits the 1-D CNN (GroupNorm, no BatchNorm; input 3 channels x 120 cells of 5 s)")
    model = maker.submit_model(CNN_MODEL)
    print(cli_models.intake_summary(model))
    _train(maker, model.name, clinic.dataset.name, pinned_root, save_report)
    _statistic(maker, clinic.dataset.name, pinned_root)
    _refused_window(maker, model.name, clinic.dataset.name)
    step("Clinic's privacy officer: what the study spent")
    with Client(address, clinic.officer_token) as office:
        print(render.budget_table(office.get_budgets(clinic.dataset.name)))


def _clinic(address: str, admin_token: str, maker_name: str, workdir: Path) -> Clinic:
    from cleanroom.cli.demo import upload

    with Client(address, admin_token) as admin:
        organisation = admin.create_organisation("Hangang Sleep Clinic", "hospital")
        team = admin.create_principal("Hangang data team", "data_owner", organisation=organisation.name)
        officer = admin.create_principal("Hangang privacy office", "privacy_officer", organisation=organisation.name)
    written = stream_samples.write_stream(workdir / "wellness.csv", SIZE)
    print(f"generated {written.rows:,} readings of {len(written.patients)} patients ({written.bytes / 1e6:.0f} MB of CSV): "
          f"a night each, every {SIZE.seconds_per_reading} s, with sleep, movement, sensor gaps and noise; "
          f"{written.condition_patients} patients have nocturnal desaturation episodes (only the generator knows which)")
    schema = parse_schema(stream_samples.schema_document(resolution_seconds=SIZE.seconds_per_reading, max_shift_days=30))
    with Client(address, team.token) as owner:
        dataset = upload(owner, written.path, schema, "overnight-wristband-2026-03")
        print(render.intake_report(dataset))
    with Client(address, officer.token) as office:
        office.set_budget(dataset.name, epsilon=8.0, delta=1e-4, reason="clinic-wide limit")
        office.share_dataset(dataset.name, maker_name, epsilon=6.0, delta=1e-4, reason="desaturation detector study 2026-318")
        office.set_approval_policy(dataset.name, max_epsilon=3.0, auto_approve_epsilon=3.0, max_delta=1e-5,
                                   reason="study jobs up to ε=3 auto-approved")
    print("the clinic's officer shares the stream with the manufacturer: budget ε=8, share ε=6, auto-approve up to ε=3")
    return Clinic(dataset, officer.token)


def training_spec(model: str, dataset: str) -> jobs_pb2.TrainingSpec:
    """A fine-tune over windows labelled by the rule: the spec's label column stays empty."""
    return jobs_pb2.TrainingSpec(model=model, dataset=dataset, feature_columns=CHANNELS, label_column="",
                                 target_epsilon=EPSILON, target_delta=DELTA, epochs=10, expected_batch_patients=32,
                                 max_rows_per_patient=WINDOWS_PER_PATIENT, learning_rate=0.01, optimizer="adam",
                                 clipping_norm=1.0, validation_fraction=0.5)


def _train(maker: Client, model: str, dataset: str, pinned_root: bytes,
           save_report: Callable[[str, float, dict[str, bytes]], Path | None]) -> None:
    from cleanroom.cli.demo import step

    spec = training_spec(model, dataset)
    windows = window_spec(WINDOW, STRIDE, RESAMPLE, label_rule=LABEL_RULE)
    step(f"Manufacturer: a windowed fine-tune at ε={EPSILON:g}: 10-minute windows every 5 minutes, a window positive when "
         f"{LABEL_RULE} s; each step samples patients, at most {WINDOWS_PER_PATIENT} windows each, "
         "and clips each patient's gradient as a whole")
    job = maker.train(spec, windows=windows)
    done = maker.wait_job(job.name, timeout=900)
    print(f"{done.name}: {cli_jobs.state_name(done)}")
    files = maker.download_all(done)
    bundle = maker.trust_bundle()
    verified = verify_job(done, files, package_directory=CNN_MODEL, pinned_root_pem=pinned_root,
                          allowed_measurements=bundle.allowed_measurements, spec=spec)
    print(f"receipt verified: signature chain, measurement, the workload with its windows, file digests, "
          f"ε {float(verified.report.epsilon_spent):.3f} recomputed with {verified.report.accountant}")
    print(validation_table(json.loads(files["metrics.json"])))
    report = save_report("wellness-cnn1d windowed fine-tune", EPSILON, files)
    if report is not None:
        print(f"HTML report: {report}")


def validation_table(metrics: dict[str, Any]) -> str:
    """The held-out patients' DP metrics, per window and per patient, with their 95% intervals. A
    patient's score is the mean of its windows' probabilities, so the operating points (thresholds
    chosen on the noisy ROC curve) say more than any fixed threshold would."""
    evaluation = metrics.get("evaluation", {})
    rows, notes = [], []
    for title, part in (("per window", evaluation), ("per patient (mean score; any positive window)", evaluation.get("per_patient", {}))):
        points = {(p.get("metric"), p.get("fixed")): p for p in part.get("operating_points", [])}
        rows.append((title, _cell(part.get("metrics", {}).get("auroc")), _cell(points.get(("sensitivity", "specificity"))),
                     _cell(points.get(("specificity", "sensitivity")))))
        scarce = (part.get("score_bins") or {}).get("scarce_class")
        if scarce:
            notes.append(f"{title.split(' (')[0]}: too few {scarce} to tell from the privacy noise at this ε, so its "
                         "intervals span the whole range (the report says so too)")
    return "\n".join(["DP validation on held-out patients (95% intervals account for the noise):",
                      render.table(("unit", "AUROC", "sensitivity at specificity ≥ 0.95", "specificity at sensitivity ≥ 0.95"), rows),
                      *notes])


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    return f"{entry['value']:.3f} [{entry['ci95'][0]:.2f}, {entry['ci95'][1]:.2f}]"


def _statistic(maker: Client, dataset: str, pinned_root: bytes) -> None:
    from cleanroom.cli.demo import step

    step("Manufacturer: the share of each patient's night with SpO2 in 90-100%, averaged per age group (a stream "
         "view: one row per patient, so a patient with more readings weighs no more)")
    query = Query(kind="mean", column="spo2_time_in_range", group_by="age_group", bounds=(0.0, 1.0), epsilon=1.0,
                  stream_view=stream_view("time_in_range:spo2:90:100"))
    answer = maker.run_query(dataset, query)
    print(cli_stats.render_answer(answer, receipt_hint=False))
    bundle = maker.trust_bundle()
    verified = verify_answer(answer, pinned_root_pem=pinned_root, allowed_measurements=bundle.allowed_measurements)
    print(f"receipt verified; it names the view the answer read: {signed_stream_view(verified)}")


def _refused_window(maker: Client, model: str, dataset: str) -> None:
    from cleanroom.cli.demo import step

    step("Bad input: windows of two days, longer than any patient's stream, are refused before any budget moves")
    try:
        maker.train(training_spec(model, dataset), windows=window_spec(2 * 86400, 86400, 1440, label_rule="spo2 below 90 for 1440"))
    except CleanroomClientError as error:
        print(error)
