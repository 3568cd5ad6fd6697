"""Wellness-stream benchmark (#18), three figures in one run, each beside its baseline from the same run.

(a) Stream ingest. A generated wellness stream (cleanroom/cli/stream_samples.py, 1 Hz; ~400 MB by
    default, like bench/ingest.py's file) uploaded as a stream over gRPC to a real server
    subprocess (`Client.upload_dataset` with the stream's schema), first byte sent to the stored
    dataset's answer, next to the floor bench/ingest.py measures (pyarrow's CSV parse plus
    AES-256-GCM of the parsed table's Arrow IPC, in-process) on the same bytes. Best against best.
(b) Worker memory. A --size-bytes stream (`make bench`: 10 GB) generated to a temp folder and
    ingested in-process (datasets.stream_intake.ingest_stream, a known data key); then phase B
    (`cleanroom.worker.phase_b.main` in a process of its own, its key released on stdin as the
    runner does) trains the 1-D CNN (examples/wellness-cnn1d) through the stream source for about
    --steps DP steps and validates on held-out patients. The worker's peak RSS (VmHWM, sampled:
    exec starts a fresh high-water mark, where ru_maxrss would carry the parent's) is printed
    beside the dataset's size. Target: under 2 GB.
(c) DP step. One DP-SGD step of the CNN (per-example gradients of the exported graph, each
    patient's summed gradient clipped, noise) against a plain non-private PyTorch step on the same
    windows (--batch-patients patients x 16 windows). Medians of interleaved rounds. Target: <= 3x.

It reports; it never fails the build.

    python bench/streams.py [--size-bytes N] [--ingest-bytes N] [--steps N] [--repeat N] [--skip-ingest]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ingest  # noqa: E402
from cleanroom.cli import stream_samples  # noqa: E402
from cleanroom.sdk import Client  # noqa: E402
from cleanroom.sdk.schema import parse_schema  # noqa: E402

PACKAGE = Path(__file__).resolve().parent.parent / "examples" / "wellness-cnn1d"
CHANNELS = [name for name, _ in stream_samples.CHANNELS]
WINDOW, STRIDE, RESAMPLE, K = 600, 300, 5, 16  # the model's (3, 120); at most K windows per patient per step
LABEL_RULE = {"channel": "spo2", "comparison": "below", "threshold": "90", "for_seconds": 30}
SIZE_BYTES = 10 * 10**9
# (b): one key for both runs, so both hold the same pseudonyms and phase B splits them alike
PSEUDONYM_KEY = hashlib.sha256(b"bench/streams.py").digest()
DAYS = 3.0  # (b): days of 1 Hz readings per patient; 10 GB is then ~660 patients
INGEST_BYTES = 400 * 10**6
RSS_TARGET = 2 << 30
STEP_TARGET = 3.0
MB, MIB = 1e6, 1 << 20


def wellness(path: Path, max_bytes: int | None, *, days: float = 3.0, patients: int = 10**6) -> stream_samples.Written:
    """The default wellness population at 1 Hz, patients added until the file reaches max_bytes."""
    size = stream_samples.StreamSize(patients=patients, days=days, seconds_per_reading=1, seed=20261207)
    started = time.perf_counter()
    written = stream_samples.write_stream(path, size, max_bytes=max_bytes)
    print(f"generated {path.name}: {written.bytes / MB:,.0f} MB, {written.rows:,} readings of {len(written.patients)} "
          f"patients in {time.perf_counter() - started:.0f} s")
    return written


def schema() -> Any:
    return parse_schema(stream_samples.schema_document(resolution_seconds=1))


# ---------------------------------------------------------------- (a) ingest


def ingest_part(path: Path, repeat: int) -> tuple[list[ingest.Floor], list[float], int]:
    floors = ingest.floor_runs(path, repeat)  # also warms the page cache for the upload
    seconds, peak = [], 0
    state_dir = Path(tempfile.mkdtemp(prefix="cleanroom-bench-"))
    try:
        with ingest.server(state_dir) as (process, address, admin_token):
            with Client(address, admin_token) as admin:
                owner_token = admin.create_principal("bench clinic", "data_owner").token
            with Client(address, owner_token) as owner:
                for _ in range(repeat):
                    started = time.perf_counter()
                    dataset = owner.upload_dataset(path, schema(), display_name="stream-bench")
                    seconds.append(time.perf_counter() - started)
                    assert dataset.intake_report.stream.readings > 0
            peak = ingest.memory_kib(process.pid)["VmHWM"]
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    return floors, seconds, peak


def report_ingest(size: int, floors: list[ingest.Floor], seconds: list[float], peak_kib: int) -> None:
    floor = min(floors, key=lambda f: f.seconds)
    best = min(seconds)
    rate = size / best / MB
    print(f"(a) stream ingest of {size / MB:.0f} MB at 1 Hz: end-to-end {rate:.0f} MB/s (best of {len(seconds)}, "
          f"{best:.1f} s; first {size / seconds[0] / MB:.0f} MB/s) beside the floor {size / floor.seconds / MB:.0f} MB/s "
          f"(CSV parse {floor.parse_s:.2f} s + AES-GCM {floor.encrypt_s:.2f} s): {floor.seconds / best:.2f} of the floor "
          f"(bench/ingest.py's table target: >= {ingest.TARGET_RATIO}); server peak RSS {peak_kib / 1024:.0f} MiB")


# ---------------------------------------------------------------- (b) worker memory


@dataclass
class Stored:
    path: Path  # the sealed stream table
    key: bytes
    dataset_id: str
    patients: int
    seconds: float
    description: dict[str, object]


def ingest_in_process(csv_path: Path, blobs_dir: Path) -> Stored:
    from cleanroom import crypto
    from cleanroom.datasets.deidentify import Pseudonymizer
    from cleanroom.datasets.stream_intake import ingest_stream
    from cleanroom.datasets.upload_stream import MAX_CHUNK_BYTES, Trailer, UploadStream
    from cleanroom.domain.deid import validate_policy
    from cleanroom.domain.streams import describe
    from cleanroom.storage.blobs import BlobStore
    from cleanroom.wire.datasets import column_from_proto, stream_spec_from_proto

    parsed = schema()
    columns = tuple(column_from_proto(c) for c in parsed.columns)
    spec = stream_spec_from_proto(parsed.stream)
    with csv_path.open("rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    size = csv_path.stat().st_size

    def parts() -> Iterator[bytes | Trailer]:
        with csv_path.open("rb") as handle:
            while chunk := handle.read(MAX_CHUNK_BYTES):
                yield chunk
        yield Trailer(size, sha256)

    key, dataset_id = crypto.new_data_key(), "bench-stream"
    started = time.perf_counter()
    result = ingest_stream(UploadStream(parts(), max_bytes=1 << 40), file_format="csv",
                           policy=validate_policy(columns, 5, stream=True), spec=spec, pseudonymizer=Pseudonymizer(PSEUDONYM_KEY),
                           shift_key=os.urandom(32), blobs=BlobStore(blobs_dir), dataset_id=dataset_id, data_key=key,
                           size_bytes=size)
    path = result.blob.commit()
    seconds = time.perf_counter() - started
    assert result.report.stream is not None
    return Stored(path, key, dataset_id, result.patient_count, seconds, describe(spec, result.report.stream).to_json())


def _released_key(key: bytes, dataset_id: str, root: Path) -> dict[str, str]:
    """The key as the runner releases it: wrapped to a fresh quote's ephemeral key (enclave_sim)."""
    from cryptography.hazmat.primitives import serialization

    import enclave_sim

    authority = enclave_sim.RootAuthority.load_or_create(root / "root")
    attestation = enclave_sim.AttestationKey.load_or_create(root / "launcher", authority)
    quote, ephemeral = enclave_sim.make_quote(attestation, "ab" * 32, "cd" * 32)
    wrapped = enclave_sim.wrap_for_enclave(key, quote, context=dataset_id.encode("ascii"))
    raw = ephemeral.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return {"quote": quote.to_bytes().hex(), "ephemeral_private_key": raw.hex(), "wrapped_key": wrapped.to_bytes().hex()}


def _export_cnn() -> torch.export.ExportedProgram:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(cnn().eval(), (torch.zeros(1, 3, WINDOW // RESAMPLE),)).run_decompositions()


def phase_b_job(stored: Stored, *, steps: int, validation_fraction: float = 0.1) -> dict[str, Any]:
    """job.json in the runner's contract for a one-site stream training of about `steps` steps."""
    train = max(1, int(stored.patients * (1 - validation_fraction)))
    windows = {"window_seconds": WINDOW, "stride_seconds": STRIDE, "resample_seconds": RESAMPLE, "min_coverage": "0.5",
               "label_rule": LABEL_RULE}
    params = {"kind": "training", "feature_columns": CHANNELS, "label_column": "", "windows": windows,
              "target_epsilon": "2", "target_delta": "1e-5", "max_rows_per_patient": K, "epochs": 1,
              "expected_batch_patients": max(1, train // steps), "learning_rate": "0.01", "optimizer": "adam",
              "clipping_norm": "1", "validation_fraction": str(validation_fraction)}
    site = {"dataset_id": stored.dataset_id, "name": "bench clinic", "blob": "site0.blob",
            "columns": {c: c for c in CHANNELS}, "patient_column": "patient_id", "linkage_column": None, "role": "train",
            "stream": stored.description}
    return {"params": params, "task": "binary-classification", "num_classes": 2, "input_shape": [3, WINDOW // RESAMPLE],
            "trainable": ["*"], "metrics": ["accuracy", "auroc"], "dataset_id": stored.dataset_id, "sites": [site]}


class PeakRss:
    """The child's VmHWM, read every 20 ms while it runs (the last reading is its peak)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kib = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak_kib = max(self.peak_kib, ingest.memory_kib(self.pid).get("VmHWM", 0))
            except OSError:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def run_phase_b(stored: Stored, work: Path, *, steps: int) -> tuple[int, int, float, dict[str, Any]]:
    """(exit code, worker peak RSS KiB, seconds, result.json) of phase B in a process of its own."""
    from cleanroom.models.intake.artifact import write_artifact

    inputs, out = work / "in", work / "out"
    inputs.mkdir()
    out.mkdir()
    os.symlink(stored.path, inputs / "site0.blob")
    write_artifact(_export_cnn(), inputs / "model.safetensors")
    (inputs / "job.json").write_text(json.dumps(phase_b_job(stored, steps=steps)))
    secrets = json.dumps({"sites": [_released_key(stored.key, stored.dataset_id, work / "enclave")]})
    code = f"import sys; from pathlib import Path; from cleanroom.worker.phase_b import main; sys.exit(main(Path({str(inputs)!r}), Path({str(out)!r})))"
    started = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    peak = PeakRss(worker.pid)
    assert worker.stdin is not None
    worker.stdin.write(secrets.encode())
    worker.stdin.close()
    exit_code = worker.wait()
    seconds = time.perf_counter() - started
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else {}
    return exit_code, peak.stop(), seconds, result


@dataclass
class Measured:
    csv_bytes: int
    sealed_bytes: int
    stored: Stored
    code: int
    peak_kib: int
    seconds: float
    result: dict[str, Any]


def measure_worker(work: Path, steps: int, *, size_bytes: int | None = None, patients: int = 10**6,
                   days: float = DAYS) -> Measured:
    """Generate, ingest, and train on a stream (of about `size_bytes`, or of `patients`) in `work`."""
    work.mkdir(parents=True, exist_ok=True)
    written = wellness(work / "stream.csv", size_bytes, days=days, patients=patients)
    stored = ingest_in_process(written.path, work / "blobs")
    written.path.unlink()  # the CSV is not the worker's business; its disk is
    return Measured(written.bytes, stored.path.stat().st_size, stored, *run_phase_b(stored, work, steps=steps))


def memory_part(size_bytes: int, steps: int, keep: Path | None) -> None:
    """The stream of `size_bytes` (DAYS a patient), and as the baseline the same patients with a
    hundredth of the readings each: the same steps, batches and held-out patients, so the same
    working set. If memory follows the working set, not the dataset, the two peaks are close."""
    work = keep or Path(tempfile.mkdtemp(prefix="cleanroom-bench-streams-"))
    try:
        big = measure_worker(work / "big", steps, size_bytes=size_bytes)
        small = measure_worker(work / "small", steps, patients=big.stored.patients, days=DAYS / 100)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    for m in (small, big):
        dp = m.result.get("dp_parameters", {})
        print(f"(b) {m.csv_bytes / MB:,.0f} MB stream: in-process ingest {m.stored.seconds:.0f} s "
              f"({m.csv_bytes / m.stored.seconds / MB:.0f} MB/s), {m.stored.patients} patients, sealed {m.sealed_bytes / MB:,.0f} MB; "
              f"phase B training (exit {m.code}, {dp.get('steps', '?')} steps of expected batch "
              f"{dp.get('expected_batch_patients', '?')} patients x <= {K} windows, then held-out validation) "
              f"in {m.seconds:.0f} s: worker peak RSS {m.peak_kib / 1024:,.0f} MiB")
    verdict = "PASS" if big.code == 0 and big.peak_kib * 1024 < RSS_TARGET else "FAIL"
    print(f"    {verdict}: worker peak RSS {big.peak_kib / 1024:,.0f} MiB for a {big.csv_bytes / MB:,.0f} MB stream "
          f"(target < {RSS_TARGET / MIB:,.0f} MiB); {big.peak_kib / 1024 - small.peak_kib / 1024:+,.0f} MiB over the "
          f"{small.csv_bytes / MB:,.0f} MB stream's {small.peak_kib / 1024:,.0f} MiB (same patients and steps) "
          f"for {big.csv_bytes / small.csv_bytes:.0f}x the data")


# ---------------------------------------------------------------- (c) DP step


def cnn() -> nn.Module:
    import importlib.util

    spec = importlib.util.spec_from_file_location("wellness_cnn1d_model", PACKAGE / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built: nn.Module = module.build_model()
    return built


def step_windows(patients: int) -> tuple[np.ndarray, np.ndarray]:
    """K windows of each of `patients` generated patients (one night at 5 s, half with the condition)."""
    from cleanroom.domain.streams import ThresholdLabel, WindowSpec
    from cleanroom.trainer import windows

    spec = WindowSpec(WINDOW, STRIDE, RESAMPLE, 0.5, ThresholdLabel("spo2", "below", 90.0, 30))
    size = stream_samples.StreamSize(patients=patients, days=0.5, condition_share=0.5, start_hours=(20.0, 21.0))
    xs, ys = [], []
    rng = np.random.default_rng(0)
    for index in range(patients):
        generator = stream_samples.patient_rng(size, index)
        columns = stream_samples.readings(stream_samples.draw_patient(size, index, generator), size, generator)
        values = {c: np.where(columns[c] < 0, np.nan, columns[c]).astype(np.float32) for c in CHANNELS}
        readings = windows.Readings.from_columns(columns["time"], values, channels=CHANNELS, label="spo2")
        starts = windows.window_starts(int(columns["time"][0]), int(columns["time"][-1]), spec)
        X, y = windows.cut(readings, windows.choose_starts(starts, K, rng), spec)
        xs.append(X[:K])
        ys.append(y[:K])
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def _times_ms(fn: Any, *, inner: int) -> float:
    started = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - started) / inner * 1e3


def step_ratio(patients: int, rounds: int = 15, inner: int = 5) -> None:
    from cleanroom.trainer import dpsgd, noise
    from cleanroom.trainer.graph import ExportedModel, Task
    from cleanroom.trainer.sources import Batch

    X_np, y_np = step_windows(patients)
    X, y = torch.as_tensor(X_np), torch.as_tensor(y_np)
    per_patient = np.repeat(np.arange(patients), K)[: len(X)]
    net = cnn()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()

    model = ExportedModel(_export_cnn(), task=Task("binary-classification", 2), trainable=["*"])
    master = model.initial_trainable()
    dp_opt = torch.optim.Adam(list(master.values()), lr=0.01)
    plan = dpsgd.StepPlan(0.1, 1, 1.0, float(patients), None)  # type: ignore[arg-type]
    batch = Batch(np.arange(len(X)), per_patient, patients)
    source = noise.SecureGaussian()

    def private() -> None:
        dpsgd.dp_step(model, master, dp_opt, X, y, batch, plan=plan, clipping_norm=1.0, noise_source=source,
                      chunk_rows=dpsgd._chunk_rows(master, K))

    for fn in (plain, private):  # warm-up, traces included
        _times_ms(fn, inner=2 * inner)
    times: dict[str, list[float]] = {"plain": [], "dp": []}
    for _ in range(rounds):  # interleaved, so load on the machine hits both alike
        times["plain"].append(_times_ms(plain, inner=inner))
        times["dp"].append(_times_ms(private, inner=inner))
    p, d = statistics.median(times["plain"]), statistics.median(times["dp"])
    verdict = "PASS" if d / p <= STEP_TARGET else "FAIL"
    print(f"(c) 1-D CNN step on {len(X)} windows ({patients} patients x {K}, input 3 x {WINDOW // RESAMPLE}): plain "
          f"{p:.1f} ms, DP {d:.1f} ms (per-example gradients, per-patient clipping, noise): ratio {d / p:.2f}x, "
          f"{verdict} (target <= {STEP_TARGET:g}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-bytes", type=float, default=SIZE_BYTES, help="(b) the stream's CSV size (default 10 GB)")
    parser.add_argument("--ingest-bytes", type=float, default=INGEST_BYTES, help="(a) the uploaded stream's size")
    parser.add_argument("--steps", type=int, default=20, help="(b) about this many DP steps")
    parser.add_argument("--repeat", type=int, default=2, help="(a) runs of the floor and of the upload; the best counts")
    parser.add_argument("--batch-patients", type=int, default=32, help="(c) patients per step, K windows each")
    parser.add_argument("--skip-ingest", action="store_true", help="leave out (a)")
    parser.add_argument("--keep", type=Path, help="(b) work in this folder and keep it")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as bench/dp_train.py: small ops gain nothing from threads on a shared machine
    warnings.filterwarnings("ignore")
    print(f"load average before the run: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores); other work slows every figure")
    if not args.skip_ingest:
        folder = Path(tempfile.mkdtemp(prefix="cleanroom-bench-ingest-"))
        try:
            path = wellness(folder / "ingest.csv", int(args.ingest_bytes), days=1.0).path
            report_ingest(path.stat().st_size, *ingest_part(path, max(1, args.repeat)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    memory_part(int(args.size_bytes), args.steps, args.keep)
    step_ratio(args.batch_patients)
    return 0  # a benchmark reports, it does not gate


if __name__ == "__main__":
    raise SystemExit(main())
