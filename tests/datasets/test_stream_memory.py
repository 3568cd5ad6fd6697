"""Stream intake in bounded memory: 50 MB and 220 MB of readings, each ingested in a process of its
own; the Arrow peak stays well under the file, and neither it nor the RSS grows with the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tests.paths import REPO_ROOT

PATIENTS = 400
START = 1_709_280_000
ROWS_PER_CHUNK = 200_000
PARTITION_BYTES = 32 << 20


def write_stream_csv(path: Path, target_bytes: int, patients: int = PATIENTS) -> int:
    """Readings of `patients` interleaved, one per second overall (so each patient's times increase),
    written a chunk at a time: the test process never holds the file either."""
    rng = np.random.default_rng(7)
    rows, second = 0, START
    options = pacsv.WriteOptions(include_header=True)
    schema = pa.schema([("pid", pa.string()), ("ts", pa.string()), ("hr", pa.float64()), ("hr_unit", pa.string()),
                        ("spo2", pa.int64())])
    with pacsv.CSVWriter(str(path), schema, write_options=options) as writer:
        while path.stat().st_size < target_bytes:
            n = ROWS_PER_CHUNK
            pids = pc.binary_join_element_wise(pa.scalar("patient-"), pc.cast(pa.array(rng.integers(0, patients, n)), pa.string()),
                                               pa.scalar(""))
            times = pc.cast(pa.array(np.arange(second, second + n), pa.timestamp("s")), pa.string())  # ISO, naive: UTC
            hr = pa.array(np.round(rng.normal(72, 9, n), 1))
            writer.write_table(pa.table([pids, times, hr, pa.array(["bpm"] * n), pa.array(rng.integers(90, 100, n))],
                                        schema=schema))
            rows, second = rows + n, second + n
    return rows


def probe(path: Path, blobs: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-m", "tests.datasets.stream_memory_probe", str(path), str(blobs),
                           str(PARTITION_BYTES)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_stream_intake_memory_follows_the_partition_not_the_file(tmp_path):
    small_file, big_file = tmp_path / "small.csv", tmp_path / "big.csv"
    small_rows, big_rows = write_stream_csv(small_file, 40 << 20), write_stream_csv(big_file, 200 << 20)
    small, big = probe(small_file, tmp_path / "blobs-small"), probe(big_file, tmp_path / "blobs-big")
    print(f"\nstream intake: {big['file_bytes'] / 1e6:.0f} MB in {big['seconds']:.1f} s, Arrow peak "
          f"{big['arrow_peak'] / 1e6:.0f} MB, RSS growth {big['rss_growth'] / 1e6:.0f} MB "
          f"(a {small['file_bytes'] / 1e6:.0f} MB file: {small['arrow_peak'] / 1e6:.0f} MB, {small['rss_growth'] / 1e6:.0f} MB)")
    assert (small["readings"], big["readings"]) == (small_rows, big_rows)
    assert big["patients"] == PATIENTS and 0 < big["stored"] <= big_rows  # 2 s cells merge some readings
    assert big["arrow_peak"] < big["file_bytes"] / 2
    # Four times the file, about the same memory: it follows the working set (the readers' pipeline
    # of 8 MB blocks, one partition), not the file. The RSS also holds the allocators' caches and
    # Python's bytes, hence its own slack; 512 MB is what a 10 GB upload may take too.
    assert big["arrow_peak"] < 1.3 * small["arrow_peak"] + (16 << 20)
    assert big["rss_growth"] < 1.3 * small["rss_growth"] + (64 << 20)
    assert big["rss_growth"] < 512 << 20


def test_one_patients_long_stream_is_stored_in_pieces_in_bounded_memory(tmp_path):
    """A patient alone larger than a partition (a monitor's months of 1 Hz readings) is read back a
    piece at a time: the same memory as many patients' readings."""
    small_file, big_file = tmp_path / "small.csv", tmp_path / "one.csv"
    write_stream_csv(small_file, 40 << 20)
    one_rows = write_stream_csv(big_file, 200 << 20, patients=1)
    small, one = probe(small_file, tmp_path / "blobs-small"), probe(big_file, tmp_path / "blobs-one")
    print(f"\none patient: {one['file_bytes'] / 1e6:.0f} MB in {one['seconds']:.1f} s, Arrow peak "
          f"{one['arrow_peak'] / 1e6:.0f} MB, RSS growth {one['rss_growth'] / 1e6:.0f} MB")
    assert one["patients"] == 1 and one["readings"] == one_rows
    assert one["arrow_peak"] < one["file_bytes"] / 2
    assert one["rss_growth"] < 1.3 * small["rss_growth"] + (64 << 20)
