"""The sandbox's stream reader (worker/stream_source.py) over real sealed stream tables.

Windows read from the sealed table must equal windows cut from the same readings held whole in
memory (trainer.windows over the patient's full rows), and one patient's windows must touch a
small part of a many-patient blob. open_site runs with a key wrapped to a real quote (enclave_sim).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from cryptography.hazmat.primitives import serialization

import enclave_sim
from cleanroom import crypto
from cleanroom.crypto.sealed_table import SealedTable
from cleanroom.domain.streams import ThresholdLabel, WindowSpec
from cleanroom.trainer import windows
from cleanroom.worker.stream_source import StreamSite, open_site, site_columns
from tests.crypto.stream_data import BLOB_ID, CountingFile, readings, seal

SPEC = WindowSpec(window_seconds=300, stride_seconds=60, resample_seconds=10, min_coverage=0.6)
RULE = WindowSpec(300, 60, 10, 0.6, ThresholdLabel("oxygen", "below", 93.0, 30))
COLUMNS = {"heart": "hr", "oxygen": "spo2", "outcome": "event"}  # study name -> this site's column


@pytest.fixture(scope="module")
def key() -> bytes:
    return crypto.new_data_key()


@pytest.fixture(scope="module")
def patients() -> list[pa.Table]:
    return [readings(f"pseudo-{i}", n, seed=i) for i, n in enumerate([3000, 20_000, 700, 9000])]


@pytest.fixture(scope="module")
def blob(patients: list[pa.Table], key: bytes) -> bytes:
    return seal(patients, key, chunk_size=1 << 16)


def _site(blob: bytes | CountingFile, key: bytes, spec: WindowSpec, label: str) -> StreamSite:
    fileobj = blob if isinstance(blob, CountingFile) else io.BytesIO(blob)
    return StreamSite(SealedTable(fileobj, key, BLOB_ID), spec=spec, channels=["spo2", "hr"], label=label)


def _in_memory(table: pa.Table, label: str) -> windows.Readings:
    columns = {name: table.column(name).cast(pa.float64()).to_numpy() for name in ("hr", "spo2", label)}
    return windows.Readings.from_columns(table.column("t").to_numpy(), columns, channels=["spo2", "hr"], label=label)


@pytest.mark.parametrize(("spec", "label"), [(SPEC, "event"), (RULE, "spo2")])
def test_windows_from_the_sealed_table_equal_windows_cut_in_memory(blob: bytes, key: bytes, patients: list[pa.Table],
                                                                   spec: WindowSpec, label: str) -> None:
    rng = np.random.default_rng(11)
    with _site(blob, key, spec, label) as site:
        assert site.patients == [f"pseudo-{i}" for i in range(len(patients))]
        total = 0
        for table, patient in zip(patients, site.patients, strict=True):
            times = table.column("t").to_numpy()
            starts = site.starts(patient)
            assert starts.tolist() == windows.window_starts(int(times[0]), int(times[-1]), spec).tolist()
            for chosen in (windows.choose_starts(starts, 6, rng), starts[:40]):  # scattered, then overlapping
                X, y = site.windows_for(patient, chosen)
                X_ref, y_ref = windows.cut(_in_memory(table, label), chosen, spec)
                np.testing.assert_array_equal(X, X_ref)
                np.testing.assert_array_equal(y, y_ref)
                assert X.dtype == np.float32 and X.shape[1:] == (2, spec.cells) and len(X) <= len(chosen)
                total += len(X)
        assert total > 50


def test_all_windows_gives_at_most_k_from_all_candidate_starts(blob: bytes, key: bytes) -> None:
    with _site(blob, key, SPEC, "event") as site:
        rng = np.random.default_rng(5)
        for k in (1, 4, 40, 10_000):  # windows over a sensor gap fail coverage: k bounds, never promises
            X, y = site.all_windows("pseudo-3", k, rng)
            assert len(X) <= min(k, len(site.starts("pseudo-3"))) and len(y) == len(X)
        assert 0 < len(site.all_windows("pseudo-3", 40, rng)[0])
        # a patient shorter than one window gives none
        tiny = readings("short", 20, seed=9)
        with _site(seal([tiny], key), key, SPEC, "event") as short:
            assert len(short.starts("short")) == 0
            assert short.all_windows("short", 8, rng)[0].shape == (0, 2, SPEC.cells)


def test_one_patient_s_windows_read_a_small_part_of_a_many_patient_blob(key: bytes) -> None:
    many = [readings(f"p{i}", 20_000, seed=100 + i) for i in range(30)]
    data = seal(many, key)
    file = CountingFile(data)
    with _site(file, key, SPEC, "event") as site:
        opened = file.bytes_read
        X, _ = site.all_windows("p12", 16, np.random.default_rng(1))
        read = file.bytes_read - opened
    assert len(X) > 0
    assert opened + read < 0.10 * len(data), (opened, read, len(data))
    assert read <= 1.1 * len(data) / 30 + 2 * (1 << 18), (read, len(data))  # one patient and a chunk each side


def test_only_the_windows_time_ranges_are_read(blob: bytes, key: bytes, patients: list[pa.Table]) -> None:
    with _site(blob, key, SPEC, "event") as site:
        starts = site.starts("pseudo-1")[[3, 200]]
        got = site.readings("pseudo-1", starts)
    times = patients[1].column("t").to_numpy()
    inside = ((times >= starts[0]) & (times < starts[0] + 300)) | ((times >= starts[1]) & (times < starts[1] + 300))
    assert got.times.tolist() == times[inside].tolist()
    assert got.channels.shape == (2, int(inside.sum())) and np.isnan(got.channels).any()


def test_a_missing_column_is_refused_by_name(blob: bytes, key: bytes) -> None:
    with pytest.raises(KeyError, match="pulse"):
        StreamSite(SealedTable(io.BytesIO(blob), key, BLOB_ID), spec=SPEC, channels=["pulse"], label="event")


def _secret(key: bytes, dataset_id: str, tmp: Path) -> dict[str, str]:
    root = enclave_sim.RootAuthority.load_or_create(tmp / "root")
    attestation = enclave_sim.AttestationKey.load_or_create(tmp / "launcher", root)
    quote, ephemeral = enclave_sim.make_quote(attestation, "ab" * 32, "cd" * 32)
    wrapped = enclave_sim.wrap_for_enclave(key, quote, context=dataset_id.encode("ascii"))
    raw = ephemeral.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return {"quote": quote.to_bytes().hex(), "ephemeral_private_key": raw.hex(), "wrapped_key": wrapped.to_bytes().hex()}


def _job(spec: WindowSpec, label_column: str) -> dict[str, Any]:
    return {"params": {"kind": "training", "feature_columns": ["oxygen", "heart"], "label_column": label_column,
                       "windows": spec.to_json(), "max_rows_per_patient": 4}}


def test_open_site_reads_with_the_released_key_and_the_site_s_names(blob: bytes, key: bytes, patients: list[pa.Table],
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "site0.blob"
    path.write_bytes(blob)
    site_json = {"dataset_id": BLOB_ID, "blob": "site0.blob", "columns": COLUMNS, "patient_column": "pid"}
    for spec, label_column, label in ((SPEC, "outcome", "event"), (RULE, "", "spo2")):
        with open_site(path, _secret(key, BLOB_ID, tmp_path), site_json, _job(spec, label_column)) as site:
            assert (site.channels, site.label, site.time_column) == (("spo2", "hr"), label, "t")
            starts = site.starts("pseudo-0")
            X, y = site.windows_for("pseudo-0", starts)
            np.testing.assert_array_equal(X, windows.cut(_in_memory(patients[0], label), starts, spec)[0])


def test_open_site_with_another_dataset_s_key_fails(blob: bytes, key: bytes, tmp_path: Path) -> None:
    path = tmp_path / "site0.blob"
    path.write_bytes(blob)
    site_json = {"dataset_id": BLOB_ID, "blob": "site0.blob", "columns": COLUMNS}
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the broker's or the blob's refusal
        open_site(path, _secret(crypto.new_data_key(), BLOB_ID, tmp_path), site_json, _job(SPEC, "outcome"))
    assert "spo2" not in str(caught.value) and "pseudo" not in str(caught.value)


def test_site_columns_map_study_names_and_the_rule_channel() -> None:
    spec, channels, label = site_columns({"columns": COLUMNS}, _job(RULE, "")["params"])
    assert spec == RULE and channels == ["spo2", "hr"] and label == "spo2"
    assert site_columns({}, _job(SPEC, "outcome")["params"])[1:] == (["oxygen", "heart"], "outcome")
