"""`cleanroom job …`: DP training and validation jobs, their receipts and downloads (manufacturer)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cleanroom.cli import render
from cleanroom.cli import streams as cli_streams
from cleanroom.cli.trust import read_pinned_root
from cleanroom.domain.recipe import RULE
from cleanroom.sdk import Client
from cleanroom.sdk.cohort import Site, parse_site
from cleanroom.sdk.verify import verify_job
from cleanroom.v1 import common_pb2, jobs_pb2

ClientFactory = Callable[[argparse.Namespace], Client]


def state_name(job: jobs_pb2.Job) -> str:
    state = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
    if job.state == jobs_pb2.JOB_STATE_FAILED:
        state += f" ({jobs_pb2.JobFailure.Name(job.failure).removeprefix('JOB_FAILURE_').lower()})"
    return state


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="models/{id}")
    parser.add_argument("--dataset", help="datasets/{id} (shared with you); or name several hospitals' datasets with --site")
    parser.add_argument("--site", type=_site, action="append", default=[], metavar="DATASET[:train|validate][,STUDY=COLUMN...]",
                        help="one hospital's dataset in a cohort (repeat it per site, instead of --dataset): the feature and "
                             "label names you give are study names, and STUDY=COLUMN maps one onto this dataset's own column "
                             "(a name left out is the same here). train: the model learns from it (in an evaluation: a site "
                             "the model saw; the default); validate: held out whole, and the validation runs on it. "
                             "The cost is charged to every site, all or none, and each hospital's policy decides its part. "
                             "Example: --site datasets/d1 --site datasets/d2:validate,malignant=diagnosis")
    parser.add_argument("--features", required=True, help="feature columns in the model's input order, comma separated, or @file with one per line")
    parser.add_argument("--label", default="", help="label column (a stream: its value at each window's last reading labels "
                                                    "the window; or label windows by --label-rule)")
    parser.add_argument("--epsilon", type=float, required=True, help="ε this job may spend")
    parser.add_argument("--delta", type=float, default=1e-5, help="δ (default 1e-5; must be below 1/patients)")
    parser.add_argument("--max-rows-per-patient", type=int, default=1, help="contribution bound per patient")
    parser.add_argument("--wait", action="store_true", help="watch until the job is final")
    cli_streams.add_window_flags(parser)


def _site(text: str) -> Site:
    try:
        return parse_site(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _fractions(text: str) -> list[float]:
    """A comma-separated list of numbers (the service checks each is strictly between 0 and 1)."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None


def _report_options(parser: argparse.ArgumentParser, what: str) -> None:
    """Binary classification: the named operating points, net-benefit thresholds and bin count of `what`."""
    parser.add_argument("--sensitivity-at-specificity", type=_fractions, default=[], metavar="S[,S...]",
                        help=f"report sensitivity at these specificities in {what}, e.g. 0.95,0.9 (default 0.95)")
    parser.add_argument("--specificity-at-sensitivity", type=_fractions, default=[], metavar="S[,S...]",
                        help=f"report specificity at these sensitivities in {what} (default 0.95)")
    parser.add_argument("--net-benefit-thresholds", type=_fractions, default=[], metavar="T[,T...]",
                        help=f"threshold probabilities for net benefit in {what} (default 0.05,0.1,0.2,0.3)")
    parser.add_argument("--score-bins", type=int, default=0,
                        help="a fixed number of score bins, 4 to 640 (default: the documented rule of the patient count and ε)")


def _features(text: str) -> list[str]:
    if text.startswith("@"):
        return [line.strip() for line in Path(text[1:]).read_text().splitlines() if line.strip()]
    return [name.strip() for name in text.split(",") if name.strip()]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], client: ClientFactory) -> None:
    job = sub.add_parser("job", help="DP training and validation jobs (manufacturer)")
    actions = job.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train", help="fine-tune a model with DP-SGD on a shared dataset",
        description="Each recipe flag left out is chosen by the service's budget-aware recipe "
                    f"({RULE}: from the dataset's public patient count, ε and the model's trainable parameter count); "
                    "the job and its receipt name the recipe. Set all five to run exactly your own.")
    _common(train)
    recipe = "default: the service's recipe"
    train.add_argument("--epochs", type=int, default=None, help=recipe)
    train.add_argument("--batch-patients", type=int, default=None, help=f"expected patients per Poisson-sampled step ({recipe})")
    train.add_argument("--learning-rate", type=float, default=None, help=recipe)
    train.add_argument("--optimizer", choices=["sgd", "adam"], default=None, help=f"{recipe} (sgd)")
    train.add_argument("--clipping-norm", type=float, default=None, help=recipe)
    train.add_argument("--validation-fraction", type=float, default=0.2, help="patients held out for a DP evaluation (default 0.2)")
    _report_options(train, "the held-out validation report")
    train.set_defaults(handler=lambda a: _submit(client(a), a, _training_spec(a)))
    evaluate = actions.add_parser("evaluate", help="DP validation of a model's pretrained weights")
    _common(evaluate)
    evaluate.add_argument("--metrics", default="", help="comma separated; default: all for the task")
    _report_options(evaluate, "the report")
    evaluate.set_defaults(handler=lambda a: _submit(client(a), a, _evaluation_spec(a)))
    for name, help_text, handler in (("show", "a job's state and artefacts", _show), ("watch", "a live status line until the job is final", _watch),
                                     ("cancel", "cancel a job", _cancel)):
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument("job", help="jobs/{id}")
        parser.set_defaults(handler=lambda a, h=handler: h(client(a), a.job))
    download = actions.add_parser("download", help="download a released job's files and verify its receipt")
    download.add_argument("job", help="jobs/{id}")
    download.add_argument("--to", default=".", help="directory for the files")
    download.add_argument("--package", required=True, help="your model package directory (to recompute the workload)")
    download.add_argument("--root-pem", required=True, help="the attestation root public key you pinned (PEM file; see `cleanroom trust --help`)")
    download.set_defaults(handler=lambda a: _download(client(a), a))


def _report_fields(a: argparse.Namespace) -> dict[str, Any]:
    return {"sensitivity_at_specificity": a.sensitivity_at_specificity, "specificity_at_sensitivity": a.specificity_at_sensitivity,
            "net_benefit_thresholds": a.net_benefit_thresholds, "score_bins": a.score_bins}


def _training_spec(a: argparse.Namespace) -> jobs_pb2.TrainingSpec:
    # A flag left out stays at its zero value: the service's recipe fills it.
    return jobs_pb2.TrainingSpec(
        model=a.model, dataset=a.dataset or "", feature_columns=_features(a.features), label_column=a.label,
        target_epsilon=a.epsilon, target_delta=a.delta, epochs=a.epochs or 0, expected_batch_patients=a.batch_patients or 0,
        learning_rate=a.learning_rate or 0.0, optimizer=a.optimizer or "", clipping_norm=a.clipping_norm or 0.0,
        validation_fraction=a.validation_fraction, max_rows_per_patient=a.max_rows_per_patient, **_report_fields(a),
    )


def _evaluation_spec(a: argparse.Namespace) -> jobs_pb2.EvaluationSpec:
    return jobs_pb2.EvaluationSpec(
        model=a.model, dataset=a.dataset or "", feature_columns=_features(a.features), label_column=a.label,
        target_epsilon=a.epsilon, target_delta=a.delta, max_rows_per_patient=a.max_rows_per_patient,
        metrics=[m for m in a.metrics.split(",") if m], **_report_fields(a),
    )


def _submit(client: Client, a: argparse.Namespace, spec: jobs_pb2.TrainingSpec | jobs_pb2.EvaluationSpec) -> int:
    if bool(a.dataset) == bool(a.site):
        print("error: name either --dataset or one --site per hospital's dataset", file=sys.stderr)
        return 2
    if bool(a.label) == (a.label_rule is not None):
        print("error: name either --label or, for a stream, --label-rule", file=sys.stderr)
        return 2
    windows = cli_streams.job_windows(a)
    if isinstance(spec, jobs_pb2.TrainingSpec):
        job = client.train(spec, cohort=a.site, windows=windows)
    else:
        job = client.evaluate(spec, cohort=a.site, windows=windows)
    print(f"{job.name}: {state_name(job)}")
    if job.linkage:
        print(f"  linkage: {job.linkage}")
    return _watch(client, job.name) if a.wait else 0


def _watch(client: Client, name: str) -> int:
    last = None
    for last in client.watch_job(name):
        print(f"\r{name}: {state_name(last):<40}", end="", flush=True, file=sys.stderr)
    print(file=sys.stderr)
    assert last is not None
    print(f"{name}: {state_name(last)}")
    return 0 if last.state == jobs_pb2.JOB_STATE_RELEASED else 5


def spec_lines(job: jobs_pb2.Job) -> list[str]:
    """What the job runs with: the recipe (and who chose it) and the report's named choices."""
    spec: jobs_pb2.TrainingSpec | jobs_pb2.EvaluationSpec = job.training if job.WhichOneof("spec") == "training" else job.evaluation
    lines = [f"  ε {spec.target_epsilon:g}, δ {spec.target_delta:g}, at most {spec.max_rows_per_patient} rows per patient"]
    for site in spec.cohort:
        role = "validate (held out)" if site.role == common_pb2.SITE_ROLE_VALIDATE else "train"
        mapping = ", ".join(f"{k}={v}" for k, v in sorted(site.columns.items()))
        lines.append(f"  site              {site.dataset} {role}{': ' + mapping if mapping else ''}")
    if job.linkage:
        lines.append(f"  linkage           {job.linkage}")
    lines += cli_streams.window_line(spec)
    if isinstance(spec, jobs_pb2.TrainingSpec):
        lines.append(f"  recipe            {spec.recipe or 'as requested'}: {spec.epochs} epochs, expected batch "
                     f"{spec.expected_batch_patients} patients, {spec.optimizer} learning rate {spec.learning_rate:g}, "
                     f"clipping norm {spec.clipping_norm:g}, validation fraction {spec.validation_fraction:g}")
    else:
        lines.append(f"  metrics           {', '.join(spec.metrics) or 'all for the task'}")

    def listed(values: Any, default: str) -> str:
        return ", ".join(f"{v:g}" for v in values) or f"{default} (default)"

    lines += [f"  sensitivity at specificity  {listed(spec.sensitivity_at_specificity, '0.95')}",
              f"  specificity at sensitivity  {listed(spec.specificity_at_sensitivity, '0.95')}",
              f"  net benefit thresholds      {listed(spec.net_benefit_thresholds, '0.05, 0.1, 0.2, 0.3')}",
              f"  score bins                  {spec.score_bins or 'the documented rule (default)'}"]
    return lines


def _show(client: Client, name: str) -> int:
    job = client.get_job(name)
    print(f"{job.name}  {job.kind}: {state_name(job)}")
    print("\n".join(spec_lines(job)))
    print(render.table(("artifact", "bytes", "sha256"), [(x.name, f"{x.size_bytes:,}", x.sha256[:16]) for x in job.artifacts]))
    return 0


def _cancel(client: Client, name: str) -> int:
    print(f"{name}: {state_name(client.cancel_job(name))}")
    return 0


def _download(client: Client, a: argparse.Namespace) -> int:
    pinned = read_pinned_root(a.root_pem)  # before any download: a wrong file is a one-line error
    job = client.get_job(a.job)
    files = client.download_all(job)
    bundle = client.trust_bundle()
    verified = verify_job(job, files, package_directory=a.package, pinned_root_pem=pinned,
                          allowed_measurements=bundle.allowed_measurements)
    target = Path(a.to)
    target.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (target / name).write_bytes(data)
    report = verified.report
    recipe = report.dp_parameters.get("recipe")  # present when the service's recipe chose the settings
    print(json.dumps({"verified": True, "simulated": report.simulated, "epsilon": report.epsilon_spent,
                      "accountant": report.accountant, **({"recipe": recipe} if recipe else {}), "files": sorted(files)}, indent=1))
    return 0
