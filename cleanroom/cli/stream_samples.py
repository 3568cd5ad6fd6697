"""A generated wellness stream for the demo, the tests and bench/streams.py: wrist-worn readings of
heart rate, SpO2 and step cadence, with a minority condition to detect. Nothing is read from
anywhere; every value is drawn from a seeded model of a day.

Per patient (the model, in the order it is drawn):
- an age group ("18-39", "40-64", "65+"), a resting heart rate and an SpO2 baseline that depend on
  it, and the condition: nocturnal desaturation, more common with age (about 15% overall);
- sleep from about 23:00 to 07:00 local time, each night jittered; asleep the heart rate falls,
  steps stop and SpO2 is a little lower; awake a circadian swing of a few bpm;
- activity bouts while awake (walks of minutes, some runs): cadence in steps/min, and the heart
  rate follows it with a ~30 s lag (a first-order filter), as a real heart does;
- sensor noise: slow drift and white noise on both vitals, readings rounded as devices report
  them (whole bpm, whole %); during movement SpO2 is missing in a third of readings and an odd
  single reading is spuriously low (motion artefacts);
- gaps where the device records nothing: an evening charge (30-90 min) and a few short dropouts
  (Bluetooth, battery) a day;
- the condition: 2-6 desaturation episodes per hour of sleep, each 30-120 s, SpO2 falling to
  80-88% and recovering, with an arousal at its end that raises the heart rate by 6-18 bpm.
  Everyone has an occasional shallow dip (to 92-95%) in sleep, so a dip alone is not the answer.
  The per-reading label `event` is 1 inside an episode.

Columns: patient_id (the key), device_serial (a direct identifier: intake drops it), time (ISO 8601
with the patient's UTC offset, e.g. Seoul's +09:00), heart_rate (bpm), spo2 (%), steps (steps/min),
event (0/1), age_group (declared categories). Rows are written patient by patient in time order,
in blocks of at most a day: memory follows one patient's span, not the file. Each patient's
readings come from their own seeded generator, so a patient is the same whatever the file's size.

    python -m cleanroom.cli.stream_samples wellness.csv --patients 120 --days 1 --rate 0.2 --schema wellness.toml
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from scipy.signal import lfilter  # type: ignore[import-untyped]  # scipy ships no stubs; a runtime dependency already

CHANNELS = (("heart_rate", "bpm"), ("spo2", "%"), ("steps", "steps/min"))
AGE_GROUPS = ("18-39", "40-64", "65+")
AGE_SHARE = (0.35, 0.40, 0.25)
CONDITION_RISK = (0.08, 0.14, 0.27)  # by age group: 15% overall
FIRST_DAY = np.datetime64("2026-03-02", "D")  # local date the first recordings start on
DAY, HOUR, MINUTE = 86400, 3600, 60
HR_LAG_SECONDS = 30.0
COLUMNS = pa.schema([("patient_id", pa.string()), ("device_serial", pa.string()), ("time", pa.string()),
                     ("heart_rate", pa.int16()), ("spo2", pa.int16()), ("steps", pa.int16()), ("event", pa.int8()),
                     ("age_group", pa.string())])


@dataclass(frozen=True)
class StreamSize:
    patients: int = 120
    days: float = 1.0
    seconds_per_reading: int = 5  # 1 is 1 Hz; the demo's default 5 keeps its intake short
    seed: int = 18
    utc_offset_minutes: int = 540  # Seoul
    # Who has the condition: None draws it by age group (15% overall, a wellness population); a
    # share applies to everyone (e.g. a sleep clinic's referrals, where it is far more common).
    condition_share: float | None = None
    start_hours: tuple[float, float] = (8.0, 14.0)  # local time a recording starts, drawn uniformly

    def __post_init__(self) -> None:
        if self.patients < 1 or not self.days > 0 or self.seconds_per_reading < 1:
            raise ValueError("patients and seconds_per_reading must be at least 1, days positive")
        if self.condition_share is not None and not 0 <= self.condition_share <= 1:
            raise ValueError("condition_share must be in [0, 1]")
        if not 0 <= self.start_hours[0] <= self.start_hours[1] < 24:
            raise ValueError("start_hours are hours of the day, the first at most the second")
        if self.days * DAY < 10 * self.seconds_per_reading:
            raise ValueError("days must hold at least ten readings")


@dataclass(frozen=True)
class Patient:
    index: int
    age_group: str
    condition: bool
    rest_hr: float
    spo2_base: float
    start: int  # epoch seconds of the first reading

    @property
    def patient_id(self) -> str:
        return f"W{self.index:06d}"


@dataclass(frozen=True)
class Written:
    """What was written, including the truth the data hides (which patients have the condition)."""

    path: Path
    rows: int
    bytes: int
    patients: tuple[Patient, ...]
    event_readings: int

    @property
    def condition_patients(self) -> int:
        return sum(p.condition for p in self.patients)


# --------------------------------------------------------------------------- schema


def schema_document(*, resolution_seconds: int = 1, max_shift_days: int = 0) -> dict[str, object]:
    """The upload's schema as a schema file holds it (cleanroom.sdk.schema.parse_schema reads it)."""
    columns = [
        {"name": "patient_id", "type": "string", "role": "patient_key"},
        {"name": "device_serial", "type": "string", "role": "direct_identifier"},
        {"name": "time", "type": "timestamp", "role": "time"},
        *({"name": name, "type": "integer", "role": "feature"} for name, _ in CHANNELS),
        {"name": "event", "type": "integer", "role": "label", "label_classes": 2},
        {"name": "age_group", "type": "string", "role": "feature", "categories": list(AGE_GROUPS)},
    ]
    stream = {"time_column": "time", "channels": [f"{name}:{unit}" for name, unit in CHANNELS],
              "time_resolution_seconds": resolution_seconds, "max_shift_days": max_shift_days}
    return {"columns": columns, "stream": stream}


def schema_toml(document: dict[str, object]) -> str:
    """The same document as a TOML schema file (JSON values are valid TOML values here)."""
    stream = document["stream"]
    assert isinstance(stream, dict) and isinstance(document["columns"], list)
    lines = ["[stream]", *(f"{k} = {json.dumps(v)}" for k, v in stream.items())]
    for column in document["columns"]:
        lines += ["", "[[columns]]", *(f"{k} = {json.dumps(v)}" for k, v in column.items())]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- patients


def patient_rng(size: StreamSize, index: int) -> np.random.Generator:
    return np.random.default_rng([size.seed, index])


def draw_patient(size: StreamSize, index: int, rng: np.random.Generator) -> Patient:
    group = int(rng.choice(len(AGE_GROUPS), p=AGE_SHARE))
    local_start = (FIRST_DAY - np.datetime64("1970-01-01", "D")).astype(int) * DAY \
        + int(rng.integers(0, 7)) * DAY + int(rng.uniform(*size.start_hours) * HOUR)
    risk = CONDITION_RISK[group] if size.condition_share is None else size.condition_share
    return Patient(index, AGE_GROUPS[group], bool(rng.random() < risk),
                   rest_hr=float(rng.normal((68, 66, 64)[group], 7)), spo2_base=float(rng.normal((97.6, 97.1, 96.4)[group], 0.5)),
                   start=local_start - size.utc_offset_minutes * MINUTE)


# --------------------------------------------------------------------------- intervals


def inside(t: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which times fall in one of the sorted, disjoint intervals [start, end)."""
    if not len(starts):
        return np.zeros(len(t), bool)
    bounds = np.column_stack([starts, ends]).ravel()
    odd: np.ndarray = np.searchsorted(bounds, t, side="right") % 2 == 1
    return odd


def disjoint(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted intervals, dropping any that starts before the previous kept one ends."""
    order = np.argsort(starts)
    kept_s, kept_e, end = [], [], -math.inf
    for s, n in zip(starts[order], lengths[order]):
        if s >= end:
            kept_s.append(s)
            kept_e.append(s + n)
            end = s + n
    return np.asarray(kept_s, np.int64), np.asarray(kept_e, np.int64)


def _index_of(starts: np.ndarray, ends: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the (last started) interval holding each time, -1 outside all."""
    if not len(starts):
        return np.full(len(t), -1)
    k = np.searchsorted(starts, t, side="right") - 1
    return np.where((k >= 0) & (t < ends[np.maximum(k, 0)]), k, -1)


def _take(values: np.ndarray, k: np.ndarray, outside: float = 0.0) -> np.ndarray:
    """values[k] where k >= 0, else `outside`."""
    if not len(values):
        return np.full(len(k), outside)
    return np.where(k >= 0, values[np.maximum(k, 0)], outside)


def _local_midnights(patient: Patient, size: StreamSize, first: int, last: int) -> np.ndarray:
    offset = size.utc_offset_minutes * MINUTE
    day0 = (first + offset) // DAY
    return np.arange(day0 - 1, (last + offset) // DAY + 2) * DAY - offset


def _nights(rng: np.random.Generator, midnights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bed = np.clip(rng.normal(23.2, 0.6, len(midnights)), 21.0, 25.5) * HOUR
    wake = np.clip(rng.normal(7.0, 0.6, len(midnights)), 5.0, 9.5) * HOUR
    return (midnights + bed).astype(np.int64), (midnights + DAY + wake).astype(np.int64)


def _within(rng: np.random.Generator, starts: np.ndarray, ends: np.ndarray, rate_per_hour: float) -> np.ndarray:
    """Poisson event times inside the given intervals at the given rate."""
    counts = rng.poisson(rate_per_hour * (ends - starts) / HOUR)
    return np.concatenate([rng.uniform(s, e, c) for s, e, c in zip(starts, ends, counts)] or [np.zeros(0)]).astype(np.int64)


# --------------------------------------------------------------------------- one patient


@dataclass
class Day:
    """A patient's whole span at the reading grid, before gaps are cut out."""

    t: np.ndarray
    asleep: np.ndarray
    cadence: np.ndarray  # true steps/min
    arousal: np.ndarray  # bpm added by desaturation arousals
    desaturation: np.ndarray  # % taken off SpO2
    event: np.ndarray


def _activity(rng: np.random.Generator, patient: Patient, t: np.ndarray, asleep: np.ndarray) -> np.ndarray:
    older = patient.age_group == "65+"
    starts = rng.uniform(t[0], t[-1], rng.poisson((5 if older else 8) * (t[-1] - t[0]) / DAY)).astype(np.int64)
    lengths = np.clip(rng.lognormal(math.log(8 * MINUTE), 0.8, len(starts)), MINUTE, 90 * MINUTE).astype(np.int64)
    starts, ends = disjoint(starts, lengths)
    pace = np.where(rng.random(len(starts)) < (0.03 if older else 0.12), rng.normal(160, 8, len(starts)),
                    rng.normal(95 if older else 108, 10, len(starts)))
    bout = _index_of(starts, ends, t)
    cadence = np.where(bout >= 0, _take(pace, bout) + rng.normal(0, 5, len(t)), 0.0)
    pottering = (bout < 0) & ~asleep & (rng.random(len(t)) < 0.08)
    cadence[pottering] = rng.uniform(5, 40, int(pottering.sum()))
    cadence[asleep] = 0.0
    return np.clip(cadence, 0, None)


def _dips(rng: np.random.Generator, t: np.ndarray, sleeps: tuple[np.ndarray, np.ndarray], *, rate: float,
          seconds: tuple[float, float], nadir: tuple[float, float], base: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Desaturations in sleep: (depth per reading, inside an episode per reading, episode ends)."""
    starts = _within(rng, *sleeps, rate)
    starts, ends = disjoint(starts, rng.uniform(*seconds, len(starts)).astype(np.int64))
    depth = np.clip(base - rng.uniform(*nadir, len(starts)), 0, None)
    k = _index_of(starts, ends, t)
    phase = (t - _take(starts, k)) / _take(np.maximum(ends - starts, 1), k, 1.0)
    shape = np.clip(np.minimum(phase / 0.35, (1.0 - phase) / 0.25), 0, 1)  # fall, hold, recover
    return _take(depth, k) * shape, k >= 0, ends


def simulate_day(patient: Patient, size: StreamSize, rng: np.random.Generator) -> Day:
    t = patient.start + size.seconds_per_reading * np.arange(int(size.days * DAY) // size.seconds_per_reading, dtype=np.int64)
    sleeps = _nights(rng, _local_midnights(patient, size, int(t[0]), int(t[-1])))
    asleep = inside(t, *sleeps)
    cadence = _activity(rng, patient, t, asleep)
    shallow, _, _ = _dips(rng, t, sleeps, rate=0.4, seconds=(10, 40), nadir=(92, 95), base=patient.spo2_base)
    desaturation, event, arousal = shallow, np.zeros(len(t), bool), np.zeros(len(t))
    if patient.condition:
        deep, event, ends = _dips(rng, t, sleeps, rate=rng.uniform(2, 6), seconds=(30, 120), nadir=(80, 88),
                                  base=patient.spo2_base)
        desaturation = np.maximum(shallow, deep)
        bump = _index_of(ends - 10, ends + 30, t)  # arousal: from 10 s before the episode's end to 30 s after
        arousal = _take(rng.uniform(6, 18, len(ends)), bump)
    return Day(t, asleep, cadence, arousal, desaturation, event)


def _ar1(rng: np.random.Generator, n: int, *, sd: float, memory_seconds: float, step: int) -> np.ndarray:
    phi = math.exp(-step / memory_seconds)
    noise = rng.normal(0, sd * math.sqrt(1 - phi * phi), n)
    out: np.ndarray = lfilter([1.0], [1.0, -phi], noise)
    return out


def _lag(target: np.ndarray, step: int) -> np.ndarray:
    alpha = 1 - math.exp(-step / HR_LAG_SECONDS)
    out: np.ndarray = lfilter([alpha], [1.0, alpha - 1.0], target, zi=[target[0] * (1 - alpha)])[0]
    return out


def readings(patient: Patient, size: StreamSize, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The patient's readings after noise, rounding, missing values and gaps (numpy, by column)."""
    day, step = simulate_day(patient, size, rng), size.seconds_per_reading
    n = len(day.t)
    hour = ((day.t + size.utc_offset_minutes * MINUTE) % DAY) / HOUR
    target = (patient.rest_hr + 3 * np.sin(2 * np.pi * (hour - 10) / 24) + np.where(day.asleep, -8.0, 5.0)
              + 0.32 * day.cadence + day.arousal)
    hr = _lag(target, step) + _ar1(rng, n, sd=3.0, memory_seconds=120, step=step) + rng.normal(0, 1.0, n)
    spo2 = (patient.spo2_base - 0.8 * day.asleep - day.desaturation + _ar1(rng, n, sd=0.4, memory_seconds=600, step=step)
            + rng.normal(0, 0.5, n))
    moving = day.cadence > 50
    spurious = moving & (rng.random(n) < 0.01)  # a motion artefact, one reading long
    spo2 = np.where(spurious, rng.uniform(84, 92, n), spo2)
    spo2_missing = (moving & (rng.random(n) < 0.33)) | (rng.random(n) < 0.005)
    hr_missing = rng.random(n) < 0.005
    keep = ~inside(day.t, *_gaps(rng, patient, size, day.t))
    return {"time": day.t[keep], "heart_rate": np.where(hr_missing, -1, np.round(hr)).astype(np.int16)[keep],
            "spo2": np.where(spo2_missing, -1, np.clip(np.round(spo2), 50, 100)).astype(np.int16)[keep],
            "steps": np.round(day.cadence).astype(np.int16)[keep], "event": day.event.astype(np.int8)[keep]}


def _gaps(rng: np.random.Generator, patient: Patient, size: StreamSize, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Device off: an evening charge each day and a few short dropouts."""
    midnights = _local_midnights(patient, size, int(t[0]), int(t[-1]))
    charge = midnights + (rng.uniform(19, 22.5, len(midnights)) * HOUR).astype(np.int64)
    charge_length = rng.uniform(30, 90, len(midnights)) * MINUTE
    drops = rng.uniform(t[0], t[-1], rng.poisson(3 * (t[-1] - t[0]) / DAY))
    drop_length = np.clip(rng.lognormal(math.log(120), 1.0, len(drops)), 20, 30 * MINUTE)
    return disjoint(np.concatenate([charge, drops]).astype(np.int64), np.concatenate([charge_length, drop_length]).astype(np.int64))


# --------------------------------------------------------------------------- writing


@lru_cache(maxsize=4)
def _clock(suffix: str) -> np.ndarray:
    return _text_table([f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}{suffix}" for s in range(DAY)])


def _text_table(texts: list[str]) -> np.ndarray:
    return np.frombuffer("".join(texts).encode(), np.uint8).reshape(len(texts), -1)


def iso_times(epoch: np.ndarray, utc_offset_minutes: int) -> pa.Array:
    """ISO 8601 local times with their offset ("2026-03-02T08:15:00+09:00"; "Z" for UTC), built from
    lookup tables of dates and clock times: a tenth of the cost of pyarrow's strftime."""
    local = epoch + utc_offset_minutes * MINUTE
    day, second = np.divmod(local, DAY)
    first = int(day.min())
    sign, minutes = ("+" if utc_offset_minutes >= 0 else "-"), abs(utc_offset_minutes)
    suffix = "Z" if utc_offset_minutes == 0 else f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    dates = _text_table([f"{np.datetime64(d, 'D')}T" for d in range(first, int(day.max()) + 1)])
    text = np.ascontiguousarray(np.hstack([dates[day - first], _clock(suffix)[second]]))
    offsets = np.arange(0, text.size + 1, text.shape[1], dtype=np.int32)
    return pa.StringArray.from_buffers(len(epoch), pa.py_buffer(offsets), pa.py_buffer(text))


def patient_table(patient: Patient, size: StreamSize, rng: np.random.Generator, serial: str) -> pa.Table:
    columns = readings(patient, size, rng)
    n = len(columns["time"])
    nullable = {name: pa.array(columns[name], mask=columns[name] < 0) for name in ("heart_rate", "spo2")}
    return pa.table({"patient_id": pa.repeat(patient.patient_id, n), "device_serial": pa.repeat(serial, n),
                     "time": iso_times(columns["time"], size.utc_offset_minutes), **nullable,
                     "steps": columns["steps"], "event": columns["event"], "age_group": pa.repeat(patient.age_group, n)},
                    schema=COLUMNS)


def write_stream(path: Path, size: StreamSize = StreamSize(), *, max_bytes: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Written:
    """Writes the CSV; with `max_bytes`, stops after the first patient that reaches it (then fewer
    patients than `size.patients` may be written). `progress(patients_done, bytes)` after each."""
    patients, rows, events = [], 0, 0
    options = pacsv.WriteOptions(quoting_style="none")  # no value holds a comma or a quote
    with pa.OSFile(str(path), "wb") as sink, pacsv.CSVWriter(sink, COLUMNS, write_options=options) as writer:
        for index in range(size.patients):
            rng = patient_rng(size, index)
            patient = draw_patient(size, index, rng)
            table = patient_table(patient, size, rng, serial=f"WD-{rng.integers(1 << 32):08X}")
            for block in table.to_batches(max_chunksize=DAY):
                writer.write_batch(block)
            patients.append(patient)
            rows += table.num_rows
            events += int(np.asarray(table["event"]).sum())
            if progress is not None:
                progress(len(patients), sink.tell())
            if max_bytes is not None and sink.tell() >= max_bytes:
                break
    return Written(path, rows, path.stat().st_size, tuple(patients), events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cleanroom.cli.stream_samples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="the CSV to write")
    parser.add_argument("--patients", type=int, default=StreamSize.patients)
    parser.add_argument("--days", type=float, default=StreamSize.days, help="days recorded per patient")
    parser.add_argument("--rate", type=float, default=1 / StreamSize.seconds_per_reading,
                        help="readings per second: 1 (1 Hz), 0.2 (every 5 s), ...; 1/rate must be whole seconds")
    parser.add_argument("--seed", type=int, default=StreamSize.seed)
    parser.add_argument("--condition-share", type=float, help="share of patients with the condition (default: by age, ~15%%)")
    parser.add_argument("--schema", type=Path, help="also write the upload's schema file (TOML) here")
    args = parser.parse_args(argv)
    period = round(1 / args.rate) if args.rate > 0 else 0
    if period < 1 or abs(period * args.rate - 1) > 1e-9:
        parser.error("--rate must be 1/N readings per second for a whole N")
    written = write_stream(args.output, StreamSize(args.patients, args.days, period, args.seed,
                                                   condition_share=args.condition_share))
    if args.schema:
        args.schema.write_text(schema_toml(schema_document(resolution_seconds=period)))
    print(f"{written.path}: {written.rows} readings of {len(written.patients)} patients ({written.bytes / 1e6:.1f} MB), "
          f"{written.condition_patients} with nocturnal desaturation, {written.event_readings} readings inside an episode")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
