"""The generated wellness stream (cleanroom/cli/stream_samples.py): seeded, in time order per patient,
with the rhythms, activity, noise, gaps and minority condition its docstring promises, written in
bounded memory, and its schema one the SDK reads as a stream upload."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from cleanroom.cli import stream_samples as ss
from cleanroom.sdk.schema import parse_schema
from cleanroom.v1 import datasets_pb2

SIZE = ss.StreamSize(patients=24, days=1.0, seconds_per_reading=5, seed=11)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> ss.Written:
    return ss.write_stream(tmp_path_factory.mktemp("stream") / "wellness.csv", SIZE)


@pytest.fixture(scope="module")
def table(written: ss.Written) -> pa.Table:
    text = {name: pa.string() for name in ("patient_id", "device_serial", "time", "age_group")}
    return pacsv.read_csv(written.path, convert_options=pacsv.ConvertOptions(column_types=text))


def _patients(size: ss.StreamSize = SIZE) -> list[tuple[ss.Patient, dict[str, np.ndarray]]]:
    out = []
    for index in range(size.patients):
        rng = ss.patient_rng(size, index)
        patient = ss.draw_patient(size, index, rng)
        out.append((patient, ss.readings(patient, size, rng)))
    return out


def _local_hour(times: np.ndarray) -> np.ndarray:
    return (times + SIZE.utc_offset_minutes * 60) % 86400 / 3600


def test_the_file_holds_every_patient_in_time_order_with_iso_times(written: ss.Written, table: pa.Table) -> None:
    assert table.column_names == [f.name for f in ss.COLUMNS]
    assert table.num_rows == written.rows and len(written.patients) == SIZE.patients
    times = pc.strptime(table["time"], format="%Y-%m-%dT%H:%M:%S%z", unit="s").cast(pa.int64()).to_numpy()
    assert all(t.endswith("+09:00") for t in table["time"].slice(0, 50).to_pylist())
    patients = table["patient_id"].to_numpy(zero_copy_only=False)
    changes = np.flatnonzero(patients[1:] != patients[:-1]) + 1
    assert len(changes) == SIZE.patients - 1  # each patient's rows are contiguous
    for start, end in zip(np.r_[0, changes], np.r_[changes, len(patients)]):
        step = np.diff(times[start:end])
        assert (step > 0).all() and (step % SIZE.seconds_per_reading == 0).all()
    expected = {p.patient_id: (p.start, p.age_group) for p in written.patients}
    firsts = {patients[i]: (times[i], table["age_group"][i].as_py()) for i in np.r_[0, changes]}
    assert firsts.keys() == expected.keys()
    assert all(firsts[k][1] == expected[k][1] and 0 <= firsts[k][0] - expected[k][0] < 3600 for k in firsts)


def test_the_same_seed_writes_the_same_bytes_and_a_patient_does_not_depend_on_the_file(tmp_path: Path, written: ss.Written) -> None:
    again = ss.write_stream(tmp_path / "again.csv", SIZE)
    assert again.path.read_bytes() == written.path.read_bytes()
    fewer = ss.write_stream(tmp_path / "fewer.csv", ss.StreamSize(patients=3, seed=SIZE.seed))
    assert written.path.read_bytes().startswith(fewer.path.read_bytes())
    other = ss.write_stream(tmp_path / "other.csv", ss.StreamSize(patients=3, seed=SIZE.seed + 1))
    assert other.path.read_bytes() != fewer.path.read_bytes()


def test_readings_follow_sleep_activity_and_physiology() -> None:
    walkers = 0
    for patient, r in _patients():
        hour = _local_hour(r["time"])
        hr, spo2, steps = (r[c].astype(float) for c in ("heart_rate", "spo2", "steps"))
        night, day = (hour > 1) & (hour < 5), (hour > 10) & (hour < 18)
        assert np.mean(hr[night & (hr > 0)]) < np.mean(hr[day & (hr > 0)]) - 5, patient  # a daily rhythm
        assert (steps[night] == 0).all()  # asleep, still
        assert 30 < hr[hr > 0].min() and hr.max() < 220 and ((spo2 == -1) | ((spo2 >= 50) & (spo2 <= 100))).all()
        walking = (steps > 80) & (hr > 0)
        if walking.sum() > 20:
            walkers += 1
            assert np.mean(hr[walking]) > np.mean(hr[(steps == 0) & ~night & (hr > 0)]) + 15  # HR follows cadence
            moving = steps > 50
            assert 0.2 < np.mean(spo2[moving] == -1) < 0.5 and np.mean(spo2[~moving] == -1) < 0.02  # motion artefacts
    assert walkers >= 0.8 * SIZE.patients


def test_gaps_cut_out_a_charge_and_dropouts() -> None:
    for patient, r in _patients():
        step = np.diff(r["time"])
        assert step.max() >= 30 * 60, patient  # the evening charge
        assert (step > SIZE.seconds_per_reading).sum() >= 2
        assert 0.02 < 1 - len(r["time"]) / (86400 / SIZE.seconds_per_reading) < 0.2


def test_the_condition_is_a_minority_with_nocturnal_desaturations_and_arousals() -> None:
    size = ss.StreamSize(patients=200, seed=5)
    patients = [ss.draw_patient(size, i, ss.patient_rng(size, i)) for i in range(size.patients)]
    share = np.mean([p.condition for p in patients])
    assert 0.08 < share < 0.25
    for patient, r in _patients():
        event, spo2, hr = r["event"] == 1, r["spo2"].astype(float), r["heart_rate"].astype(float)
        if not patient.condition:
            assert not event.any()
            continue
        hour = _local_hour(r["time"])
        assert event.sum() > 20 and ((hour[event] > 20) | (hour[event] < 10)).all()  # at night
        seen = event & (spo2 > 0)
        assert np.mean(spo2[seen] < 90) > 0.3 and np.median(spo2[seen]) < np.median(spo2[~event & (spo2 > 0)]) - 4
        low = np.flatnonzero(seen & (spo2 < 88))
        after = np.clip(low + 30 // SIZE.seconds_per_reading * 2, 0, len(hr) - 1)
        assert np.mean(hr[after]) > np.mean(hr[low]) + 2  # the arousal at the episode's end


def test_a_referral_population_and_night_recordings_are_options() -> None:
    size = ss.StreamSize(patients=200, days=0.5, condition_share=0.5, start_hours=(20.0, 21.0), seed=2)
    patients = [ss.draw_patient(size, i, ss.patient_rng(size, i)) for i in range(size.patients)]
    assert 0.4 < np.mean([p.condition for p in patients]) < 0.6
    hours = [(p.start + size.utc_offset_minutes * 60) % 86400 / 3600 for p in patients]
    assert 20 <= min(hours) and max(hours) <= 21
    with pytest.raises(ValueError):
        ss.StreamSize(condition_share=1.5)


def test_patients_without_the_condition_still_dip_now_and_then() -> None:
    clean = [r for p, r in _patients() if not p.condition]
    shallow = [np.sum((r["spo2"] >= 92) & (r["spo2"] <= 94) & (_local_hour(r["time"]) < 6)) for r in clean]
    assert np.mean(np.asarray(shallow) > 0) > 0.5


def test_memory_follows_one_patient_not_the_file(tmp_path: Path) -> None:
    peaks = []
    for patients in (2, 12):
        tracemalloc.start()
        ss.write_stream(tmp_path / f"m{patients}.csv", ss.StreamSize(patients=patients, seed=1))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0]


def test_max_bytes_stops_after_the_patient_that_reaches_it(tmp_path: Path) -> None:
    done = ss.write_stream(tmp_path / "cap.csv", ss.StreamSize(patients=50), max_bytes=2_000_000)
    assert len(done.patients) < 50 and 2_000_000 <= done.bytes < 2_000_000 + 1_200_000


def test_the_schema_declares_a_stream_upload_the_sdk_reads(tmp_path: Path) -> None:
    document = ss.schema_document(resolution_seconds=5, max_shift_days=30)
    (tmp_path / "s.toml").write_text(ss.schema_toml(document))
    import tomllib

    assert tomllib.loads((tmp_path / "s.toml").read_text()) == document
    schema = parse_schema(document)
    roles = {c.name: c.role for c in schema.columns}
    assert roles["time"] == datasets_pb2.TIME and roles["device_serial"] == datasets_pb2.DIRECT_IDENTIFIER
    assert roles["event"] == datasets_pb2.LABEL and list(next(c for c in schema.columns if c.name == "age_group").categories) == list(ss.AGE_GROUPS)
    assert schema.stream is not None and schema.stream.time_column == "time"
    assert [(c.name, c.unit) for c in schema.stream.channels] == list(ss.CHANNELS)
    assert (schema.stream.time_resolution_seconds, schema.stream.max_shift_days) == (5, 30)


def test_iso_times_match_strftime_across_days_and_offsets() -> None:
    epoch = np.array([0, 951_782_400, 1_772_400_000, 1_772_400_000 + 86_399, 4_102_444_799], dtype=np.int64)
    for minutes in (0, 540, -300, 330):
        suffix = "Z" if minutes == 0 else f"{'+' if minutes > 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        expected = pc.strftime(pa.array(epoch + minutes * 60, pa.timestamp("s")), format=f"%Y-%m-%dT%H:%M:%S{suffix}")
        assert ss.iso_times(epoch, minutes).to_pylist() == expected.to_pylist()
