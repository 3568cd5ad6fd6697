"""`cleanroom job …`: DP training and validation jobs, their receipts and downloads (manufacturer)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from cleanroom.cli import render
from cleanroom.cli.trust import read_pinned_root
from cleanroom.sdk import Client
from cleanroom.sdk.verify import verify_job
from cleanroom.v1 import jobs_pb2

ClientFactory = Callable[[argparse.Namespace], Client]


def state_name(job: jobs_pb2.Job) -> str:
    state = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
    if job.state == jobs_pb2.JOB_STATE_FAILED:
        state += f" ({jobs_pb2.JobFailure.Name(job.failure).removeprefix('JOB_FAILURE_').lower()})"
    return state


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="models/{id}")
    parser.add_argument("--dataset", required=True, help="datasets/{id} (shared with you)")
    parser.add_argument("--features", required=True, help="feature columns in the model's input order, comma separated, or @file with one per line")
    parser.add_argument("--label", required=True, help="label column")
    parser.add_argument("--epsilon", type=float, required=True, help="ε this job may spend")
    parser.add_argument("--delta", type=float, default=1e-5, help="δ (default 1e-5; must be below 1/patients)")
    parser.add_argument("--max-rows-per-patient", type=int, default=1, help="contribution bound per patient")
    parser.add_argument("--wait", action="store_true", help="watch until the job is final")


def _features(text: str) -> list[str]:
    if text.startswith("@"):
        return [line.strip() for line in Path(text[1:]).read_text().splitlines() if line.strip()]
    return [name.strip() for name in text.split(",") if name.strip()]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], client: ClientFactory) -> None:
    job = sub.add_parser("job", help="DP training and validation jobs (manufacturer)")
    actions = job.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="fine-tune a model with DP-SGD on a shared dataset")
    _common(train)
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--batch-patients", type=int, default=64, help="expected patients per Poisson-sampled step")
    train.add_argument("--learning-rate", type=float, default=0.1)
    train.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    train.add_argument("--clipping-norm", type=float, default=1.0)
    train.add_argument("--validation-fraction", type=float, default=0.2, help="patients held out for a DP evaluation")
    train.set_defaults(handler=lambda a: _submit(client(a), a, _training_spec(a)))
    evaluate = actions.add_parser("evaluate", help="DP validation of a model's pretrained weights")
    _common(evaluate)
    evaluate.add_argument("--metrics", default="", help="comma separated; default: all for the task")
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


def _training_spec(a: argparse.Namespace) -> jobs_pb2.TrainingSpec:
    return jobs_pb2.TrainingSpec(
        model=a.model, dataset=a.dataset, feature_columns=_features(a.features), label_column=a.label,
        target_epsilon=a.epsilon, target_delta=a.delta, epochs=a.epochs, expected_batch_patients=a.batch_patients,
        learning_rate=a.learning_rate, optimizer=a.optimizer, clipping_norm=a.clipping_norm,
        validation_fraction=a.validation_fraction, max_rows_per_patient=a.max_rows_per_patient,
    )


def _evaluation_spec(a: argparse.Namespace) -> jobs_pb2.EvaluationSpec:
    return jobs_pb2.EvaluationSpec(
        model=a.model, dataset=a.dataset, feature_columns=_features(a.features), label_column=a.label,
        target_epsilon=a.epsilon, target_delta=a.delta, max_rows_per_patient=a.max_rows_per_patient,
        metrics=[m for m in a.metrics.split(",") if m],
    )


def _submit(client: Client, a: argparse.Namespace, spec: jobs_pb2.TrainingSpec | jobs_pb2.EvaluationSpec) -> int:
    job = client.train(spec) if isinstance(spec, jobs_pb2.TrainingSpec) else client.evaluate(spec)
    print(f"{job.name}: {state_name(job)}")
    return _watch(client, job.name) if a.wait else 0


def _watch(client: Client, name: str) -> int:
    last = None
    for last in client.watch_job(name):
        print(f"\r{name}: {state_name(last):<40}", end="", flush=True, file=sys.stderr)
    print(file=sys.stderr)
    assert last is not None
    print(f"{name}: {state_name(last)}")
    return 0 if last.state == jobs_pb2.JOB_STATE_RELEASED else 5


def _show(client: Client, name: str) -> int:
    job = client.get_job(name)
    print(f"{job.name}  {job.kind}: {state_name(job)}")
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
    print(json.dumps({"verified": True, "simulated": report.simulated, "epsilon": report.epsilon_spent,
                      "accountant": report.accountant, "files": sorted(files)}, indent=1))
    return 0
