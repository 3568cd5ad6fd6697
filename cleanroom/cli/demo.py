"""`make demo`: the clean-room on embedded defaults, from an empty state directory.

Starts a real server process, creates the first admin with the local bootstrap command, creates a
hospital, a manufacturer and a privacy officer, uploads the breast-cancer data with its synthetic
identifiers, prints the intake report, and shows what each role can and cannot see; then the
officer's budgets, a few DP statistics, model intake, DP validation and fine-tuning with verified
receipts, and the refusals on the way. Then a three-hospital study (cleanroom/cli/demo_sites.py):
two hospitals train, the third validates externally, each hospital's officer decides its part. Then
a wellness-stream study (cleanroom/cli/demo_streams.py): a sleep clinic's overnight wristband
readings, a windowed DP fine-tune of a 1-D CNN validated per window and per patient, and a DP
statistic over the stream. The web console runs beside the server throughout; at the end the demo
prints its address and a one-time sign-in for the story's privacy officer and hospital
(cleanroom/cli/demo_console.py), and in a terminal waits for Enter before stopping both.

The server's state lives in a temporary folder removed at exit; what the demo tells you to open
(the privacy-utility plot, each job's HTML report) goes to an output folder that stays
(`--output`, default ./demo-output), named at the end of the run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cleanroom.cli import jobs as cli_jobs
from cleanroom.cli import models as cli_models
from cleanroom.cli import render, samples
from cleanroom.cli import stats as cli_stats
from cleanroom.cli.demo_console import Person, create_sign_ins, hold, sign_in_text, start_console
from cleanroom.cli.demo_sites import three_hospital_study
from cleanroom.cli.demo_streams import stream_study
from cleanroom.domain.recipe import RULE, budget_recipe
from cleanroom.sdk import CleanroomClientError, Client
from cleanroom.sdk.schema import Schema
from cleanroom.sdk.stats import verify_answer
from cleanroom.sdk.verify import verify_job
from cleanroom.statistics.engine import Filter, Query
from cleanroom.v1 import datasets_pb2, jobs_pb2

EXAMPLE_MODEL = Path(__file__).resolve().parents[2] / "examples" / "breast-cancer-mlp"
PLOT_NAME = "privacy-utility.png"
DEFAULT_OUTPUT = Path("demo-output")
# The fine-tunes use the service's budget-aware recipe (cleanroom/domain/recipe.py), a rule fixed in
# advance of (patients, ε, model size). Its inputs here are public: the Wisconsin set's documented
# 569 instances and the example package's 62 parameters (30 x 2 weights and 2 biases). Half the
# patients are held out for the DP validation report: its interval narrows with their number.
PUBLIC_PATIENTS, EXAMPLE_PARAMETERS, VALIDATION_FRACTION = 569, 62, 0.5


# One plotted job: its title, its ε and its DP accuracy entry from metrics.json (value and ci95).
Point = tuple[str, float, dict[str, Any] | None]


@dataclass(frozen=True)
class JobBase:
    """What every job of the demo shares: the model, the dataset, the columns and δ."""

    model: str
    dataset: str
    target_delta: float = 1e-5

    def evaluation(self, epsilon: float) -> jobs_pb2.EvaluationSpec:
        return jobs_pb2.EvaluationSpec(model=self.model, dataset=self.dataset, feature_columns=samples.feature_names(),
                                       label_column="malignant", target_epsilon=epsilon, target_delta=self.target_delta)

    def training(self, epsilon: float) -> jobs_pb2.TrainingSpec:
        """A fine-tune with the budget-aware recipe for the public patient count."""
        recipe = budget_recipe(patients=PUBLIC_PATIENTS, epsilon=epsilon, model_parameters=EXAMPLE_PARAMETERS,
                               validation_fraction=VALIDATION_FRACTION)
        return jobs_pb2.TrainingSpec(model=self.model, dataset=self.dataset, feature_columns=samples.feature_names(),
                                     label_column="malignant", target_epsilon=epsilon, target_delta=self.target_delta,
                                     epochs=recipe.epochs, expected_batch_patients=recipe.expected_batch_patients,
                                     learning_rate=recipe.learning_rate, optimizer=recipe.optimizer,
                                     clipping_norm=recipe.clipping_norm, validation_fraction=VALIDATION_FRACTION)


def _root_pem(state_dir: Path) -> bytes:
    import enclave_sim

    return enclave_sim.RootAuthority.load_or_create(state_dir / "enclave" / "root").public_key_pem()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cleanroom.cli.main", *args]


def start_server(state_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = state_dir / "port"
    server = subprocess.Popen(
        _cli("serve", "--state-dir", str(state_dir), "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--log-level", "WARNING",
             "--metrics-listen", "127.0.0.1:0")
    )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start; see its output above")
        time.sleep(0.1)
    return server, f"127.0.0.1:{port_file.read_text().strip()}"


def step(title: str) -> None:
    print(f"\n== {title}")


def upload(client: Client, path: Path, schema: Schema, name: str) -> datasets_pb2.Dataset:
    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="upload", file=sys.stdout) as bar:
        return client.upload_dataset(path, schema, display_name=name, progress=lambda sent, _t: bar.update(sent - bar.n))


@dataclass
class DemoOutput:
    """The folder that outlives the demo: the plot and each job's HTML report, with stable names
    (a rerun overwrites them instead of piling up)."""

    directory: Path
    written: list[Path] = field(default_factory=list)

    @classmethod
    def prepare(cls, directory: Path) -> DemoOutput:
        directory = directory.expanduser().resolve()
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory)

    def job_report(self, step_number: int, title: str, epsilon: float, files: dict[str, bytes]) -> Path | None:
        """Saves a downloaded job's report.html (None when the job released none)."""
        if "report.html" not in files:
            return None
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        return self._write(f"job-{step_number}-{slug}-eps{epsilon:g}-report.html", files["report.html"])

    def plot(self, points: list[Point]) -> Path:
        path = plot_utility(points, self.directory / PLOT_NAME)
        self.written.append(path)
        return path

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        self.written.append(path)
        return path

    def summary(self) -> str:
        names = "\n".join(f"  {p.name}" for p in self.written) or "  (nothing: the run stopped before its jobs)"
        return f"demo output, kept after exit: {self.directory}\n{names}"


def run(workdir: Path, output: DemoOutput) -> None:
    state_dir = workdir / "state"
    step("Bootstrap: the first admin is created locally, with access to the state directory")
    admin_token = subprocess.run(
        _cli("admin", "bootstrap", "--state-dir", str(state_dir), "--name", "operator"), check=True, capture_output=True, text=True
    ).stdout.strip()
    print("admin token created (shown once, stored only as a hash)")
    server, address = start_server(state_dir)
    console = None
    try:
        # The manufacturer pins the attestation root once, out of band (here: read from the state directory).
        pinned_root = _root_pem(state_dir)
        console = start_console(address, workdir, pinned_root)
        print(f"web console started at {console.url} (its sign-ins are printed at the end)")
        people = story(address, admin_token, workdir, pinned_root, output)
        step("Web console: a one-time sign-in for the privacy officer and the hospital of this story")
        with Client(address, admin_token) as admin:
            print(sign_in_text(console.url, create_sign_ins(admin, people)))
        hold(console, sys.stdin)
    finally:
        if console is not None:
            console.stop()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        print(f"\nserver stopped gracefully (exit {server.returncode})")


def story(address: str, admin_token: str, workdir: Path, pinned_root: bytes, output: DemoOutput) -> list[Person]:
    """The whole flow; returns who of it gets a web-console sign-in."""
    with Client(address, admin_token) as admin:
        step("Admin creates the principals")
        hospital = admin.create_principal("Seoul National University Hospital - data team", "data_owner")
        maker = admin.create_principal("Acme Medical Devices - ML team", "manufacturer")
        officer = admin.create_principal("SNUH privacy office", "privacy_officer")
        print(render.table(("name", "display name", "role"), [(p.name, p.display_name, render.role_name(p.role)) for p in admin.list_principals()]))

    csv_path = samples.write_breast_cancer_csv(workdir / "breast_cancer.csv")
    schema = Schema(samples.breast_cancer_schema(), k_anonymity=5)
    with Client(address, hospital.token) as owner:
        step("Hospital uploads the Wisconsin breast-cancer data (569 patients, synthetic identifiers added)")
        dataset = upload(owner, csv_path, schema, "breast-cancer-wisconsin")
        print(render.intake_report(dataset))
        step("Stored schema: direct identifiers dropped, quasi-identifiers generalised")
        print(render.columns_table(dataset))

        step("Bad input: the same file with resident registration numbers declared as a feature")
        wrong = Schema([_as_feature(c) for c in schema.columns], 5)
        try:
            owner.upload_dataset(csv_path, wrong, display_name="mistake")
        except CleanroomClientError as error:
            print(error)
        print(f"datasets stored: {len(list(owner.list_datasets()))} (the refused upload left nothing)")

    with Client(address, maker.token) as manufacturer:
        step("Manufacturer: no access until a privacy officer shares the dataset")
        try:
            manufacturer.get_dataset(dataset.name)
        except CleanroomClientError as error:
            print(error)

    with Client(address, officer.token) as privacy_office:
        governance(privacy_office, dataset.name, maker.principal.name)
    with Client(address, maker.token) as manufacturer:
        step("Manufacturer: now sees the schema (nothing else) and its own budget")
        shared = manufacturer.get_dataset(dataset.name)
        print(f"{shared.name}: {len(shared.columns)} columns, row count hidden ({shared.row_count})")
        estimate = manufacturer.estimate_cost(dataset.name, epsilon=1.0, delta=1e-5)
        print(f"dry run for ε=1, δ=1e-5: {estimate.decision.replace('_', ' ')}, "
              f"{estimate.remaining_after[0].remaining.epsilon:g} ε would remain on its share")
        try:
            manufacturer.delete_dataset(dataset.name)
        except CleanroomClientError as error:
            print(error)
        run_statistics(manufacturer, dataset.name, pinned_root)
        model = submit_model(manufacturer)
        run_jobs(manufacturer, model, dataset.name, pinned_root, output)
    with Client(address, officer.token) as privacy_office:
        step("Privacy officer: what remains")
        print(render.budget_table(privacy_office.get_budgets(dataset.name)))
    with Client(address, maker.token) as manufacturer:
        three_hospital_study(address, admin_token, manufacturer, model, workdir, pinned_root, example_model=EXAMPLE_MODEL,
                             save_report=lambda title, epsilon, files: output.job_report(4, title, epsilon, files))
        stream_study(address, admin_token, manufacturer, workdir, pinned_root,
                     save_report=lambda title, epsilon, files: output.job_report(5, title, epsilon, files))
    leave_a_request_for_the_console(officer.token, maker.token, address, dataset.name)
    return [Person("privacy officer", officer.principal.name, "snuh.privacy"),
            Person("hospital data team", hospital.principal.name, "snuh.data")]


def leave_a_request_for_the_console(officer_token: str, maker_token: str, address: str, dataset: str) -> None:
    """One request waits in the officer's console inbox at the end, to be decided there."""
    step("Privacy officer lowers the auto-approve line; the manufacturer's next query waits for the console")
    with Client(address, officer_token) as officer:
        officer.set_approval_policy(dataset, max_epsilon=3.0, auto_approve_epsilon=0.1, max_delta=1e-5,
                                    reason="from now on an officer reads every request above ε=0.1")
    with Client(address, maker_token) as manufacturer:
        try:
            manufacturer.run_query(dataset, Query(kind="mean", column="mean_radius", bounds=(5.0, 30.0), epsilon=0.2))
        except CleanroomClientError as error:
            print(error)  # FAILED_PRECONDITION naming the pending request: it is in the officer's inbox now


def run_statistics(manufacturer: Client, dataset: str, pinned_root: bytes) -> None:
    """A few DP questions first: each priced by a dry run, answered by the warm statistics worker,
    charged to the share, and signed."""
    bundle = manufacturer.trust_bundle()
    by_year = Query(kind="count", group_by="visit_date", epsilon=0.15, delta=1e-6)
    step("Manufacturer: DP statistics. Dry run of a count per visit year (nothing is spent)")
    print(cli_stats.render_estimate(manufacturer.estimate_query(dataset, by_year)))
    step("Manufacturer: the count per visit year (years are data, so a year below the DP threshold would not appear)")
    print(cli_stats.render_answer(manufacturer.run_query(dataset, by_year)))
    step("Manufacturer: the count per age band (bands follow from the intake rule: all answered, no threshold, no δ)")
    print(cli_stats.render_answer(manufacturer.run_query(dataset, Query(kind="count", group_by="age", epsilon=0.15))))
    step("Manufacturer: mean radius of malignant tumours, clamped to public bounds")
    answer = manufacturer.run_query(dataset, Query(kind="mean", column="mean_radius", bounds=(5.0, 30.0), epsilon=0.3,
                                                   filters=(Filter("malignant", "==", 1),)))
    print(cli_stats.render_answer(answer))
    verify_answer(answer, pinned_root_pem=pinned_root, allowed_measurements=bundle.allowed_measurements)
    print("receipt verified: signature chain to the pinned root, measurement, the dataset's statistics workload, the signed answer")
    step("Bad input: a mean over a text column is refused before any budget is reserved")
    try:
        manufacturer.run_query(dataset, Query(kind="mean", column="postcode", bounds=(0.0, 1.0), epsilon=0.3))
    except CleanroomClientError as error:
        print(error)


def submit_model(manufacturer: Client) -> str:
    step("Manufacturer submits a model package: its Python runs only in a fresh sandbox, without data")
    version = manufacturer.submit_model(EXAMPLE_MODEL)
    print(cli_models.intake_summary(version))
    return version.name


def run_jobs(manufacturer: Client, model: str, dataset: str, pinned_root: bytes, output: DemoOutput) -> None:
    bundle = manufacturer.trust_bundle()
    print(f"\ntrust bundle (simulated={bundle.simulated}): root {bundle.root_fingerprint[:16]}…, "
          f"{len(bundle.allowed_measurements)} allowed trainer measurement(s)")
    base = JobBase(model, dataset)
    plan: list[tuple[str, jobs_pb2.EvaluationSpec | jobs_pb2.TrainingSpec]] = [
        ("validate the submitted weights", base.evaluation(0.5)), ("fine-tune", base.training(1.0)), ("fine-tune", base.training(3.0))]
    rows: list[tuple[str, ...]] = []
    points: list[Point] = []
    for number, (title, spec) in enumerate(plan, start=1):
        step(f"Manufacturer: {title} at ε={spec.target_epsilon:g} (phase B: service code in bubblewrap, key from the broker)")
        if isinstance(spec, jobs_pb2.TrainingSpec):
            print(f"recipe: {RULE} for {PUBLIC_PATIENTS} patients (public count), ε={spec.target_epsilon:g}, {EXAMPLE_PARAMETERS} "
                  f"parameters: {spec.epochs} epochs, expected batch {spec.expected_batch_patients}, {spec.optimizer} "
                  f"learning rate {spec.learning_rate:g}, clipping norm {spec.clipping_norm:g}")
        job = manufacturer.evaluate(spec) if isinstance(spec, jobs_pb2.EvaluationSpec) else manufacturer.train(spec)
        done = manufacturer.wait_job(job.name, timeout=900)
        print(f"{done.name}: {cli_jobs.state_name(done)}")
        files = manufacturer.download_all(done)
        verified = verify_job(done, files, package_directory=EXAMPLE_MODEL, pinned_root_pem=pinned_root,
                              allowed_measurements=bundle.allowed_measurements, spec=spec)
        print(f"receipt verified: signature chain to the pinned root, measurement, workload, {len(files) - 1} file digests, "
              f"ε {float(verified.report.epsilon_spent):.3f} recomputed with {verified.report.accountant}")
        report = output.job_report(number, title, spec.target_epsilon, files)
        if report is not None:
            print(f"HTML report: {report}")
        rows.append(_metrics_row(title, spec.target_epsilon, files))
        points.append((title, spec.target_epsilon, json.loads(files["metrics.json"])["evaluation"]["metrics"].get("accuracy")))
    step("DP metrics (95% intervals account for the noise)")
    print(render.table(("job", "ε", "accuracy", "sensitivity", "specificity", "AUROC"), rows))
    print(f"privacy-utility plot: {output.plot(points)}")
    step("Bad input: a second fine-tune at ε=3 would exceed the share's budget")
    try:
        manufacturer.train(base.training(3.0))
    except CleanroomClientError as error:
        print(error)


def plot_utility(points: list[Point], path: Path) -> Path:
    """DP accuracy with its 95% interval against ε: the fine-tunes as a curve, the evaluation of the
    submitted weights as a reference (its ε is the evaluation's own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    series: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
        ("fine-tuned (held-out patients)", "o-", lambda t: t == "fine-tune"), ("submitted weights", "s", lambda t: t != "fine-tune"))
    for label, marker, chosen in series:
        shown = [(eps, m) for title, eps, m in points if chosen(title) and m]
        if shown:
            values = [m["value"] for _, m in shown]
            errors = [[v - m["ci95"][0] for v, (_, m) in zip(values, shown)], [m["ci95"][1] - v for v, (_, m) in zip(values, shown)]]
            ax.errorbar([e for e, _ in shown], values, yerr=errors, fmt=marker, capsize=3, label=label)
    ax.set(xlabel="ε (δ = 1e-5)", ylabel="DP accuracy, 95% interval", ylim=(0, 1.05))
    ax.legend(loc="lower right")
    ax.set_title("breast cancer: privacy-utility of the demo's jobs", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _metrics_row(title: str, epsilon: float, files: dict[str, bytes]) -> tuple[str, ...]:
    metrics: dict[str, Any] = json.loads(files["metrics.json"])["evaluation"]["metrics"]

    def cell(name: str) -> str:
        if name not in metrics:
            return "-"
        entry = metrics[name]
        return f"{entry['value']:.3f} [{entry['ci95'][0]:.2f}, {entry['ci95'][1]:.2f}]"

    return (title, f"{epsilon:g}", cell("accuracy"), cell("sensitivity"), cell("specificity"), cell("auroc"))


def governance(officer: Client, dataset: str, manufacturer: str) -> None:
    step("Privacy officer: a dataset-wide cap, a share with its own cap, and an approval policy")
    officer.set_budget(dataset, epsilon=8.0, delta=1e-4, reason="hospital-wide limit agreed with the IRB")
    officer.share_dataset(dataset, manufacturer, epsilon=5.6, delta=1e-4, reason="arrhythmia pilot, contract 2026-114")
    officer.set_approval_policy(dataset, max_epsilon=3.0, auto_approve_epsilon=3.0, max_delta=1e-5,
                                reason="pilot jobs up to ε=3 auto-approved")
    print(render.budget_table(officer.get_budgets(dataset)))
    step("Bad input: a budget with δ = 1 is refused with the field named")
    try:
        officer.set_budget(dataset, epsilon=8.0, delta=1.0, reason="typo")
    except CleanroomClientError as error:
        print(error)
    step("Audit: every action above is in a hash chain that verifies")
    verdict = officer.verify_audit_log()
    print(f"{'intact' if verdict.ok else 'BROKEN'}: {verdict.entries} entries, head {verdict.head_seq}:{verdict.head_hash[:16]}…")


def _as_feature(column: datasets_pb2.ColumnSpec) -> datasets_pb2.ColumnSpec:
    copy = datasets_pb2.ColumnSpec()
    copy.CopyFrom(column)
    if copy.name == "rrn":
        copy.role = datasets_pb2.FEATURE
    return copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cleanroom.cli.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="DIR",
                        help=f"folder for the privacy-utility plot and each job's HTML report; kept after the run "
                             f"(default: ./{DEFAULT_OUTPUT}; files of an earlier run with the same names are overwritten)")
    parser.add_argument("--keep", action="store_true", help="also keep the server's state directory and print its path")
    args = parser.parse_args(argv)
    output = DemoOutput.prepare(args.output)
    workdir = Path(tempfile.mkdtemp(prefix="cleanroom-demo-"))
    try:
        run(workdir, output)
    finally:
        if args.keep:
            print(f"state kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"\n{output.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
