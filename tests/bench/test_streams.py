"""bench/streams.py at tiny sizes: its three parts run end to end and print their figures (stream ingest
beside the floor over a real server, phase B's peak RSS in a process of its own, the DP step ratio)."""

from __future__ import annotations

import json
import re

import pytest

from bench import streams


@pytest.mark.timeout(300)
def test_the_bench_prints_its_three_figures_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert streams.main(["--size-bytes", "6e7", "--ingest-bytes", "1e7", "--repeat", "1", "--steps", "3",
                         "--batch-patients", "4"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\(a\) stream ingest of 10 MB at 1 Hz: end-to-end \d+ MB/s .* beside the floor \d+ MB/s", out), out
    memory = re.search(r"PASS: worker peak RSS ([\d,]+) MiB for a (\d+) MB stream .* (\d+) MB stream's .*same patients", out)
    assert memory, out
    assert 100 < int(memory[1].replace(",", "")) < 2048 and int(memory[2]) >= 60 and int(memory[3]) < int(memory[2]) / 50
    runs = re.findall(r"\(b\) \d+ MB stream: .* (\d+) patients, sealed \d+ MB; phase B training \(exit 0, (\d+) steps", out)
    assert len(runs) == 2 and runs[0] == runs[1], out  # the baseline: the same patients and steps
    assert re.search(r"\(c\) 1-D CNN step on \d+ windows \(4 patients x 16.*ratio [\d.]+x", out), out


def test_the_phase_b_job_bounds_its_steps_and_names_the_stream_site() -> None:
    stored = streams.Stored(path=None, key=b"", dataset_id="d", patients=200, seconds=0.0,  # type: ignore[arg-type]
                            description={"time_column": "time"})
    job = streams.phase_b_job(stored, steps=20, validation_fraction=0.1)
    params = job["params"]
    assert params["epochs"] == 1 and params["expected_batch_patients"] == 180 // 20
    assert params["max_rows_per_patient"] == streams.K and params["label_column"] == ""
    assert job["input_shape"] == [3, streams.WINDOW // streams.RESAMPLE] and job["sites"][0]["stream"] == {"time_column": "time"}
    json.dumps(job)  # as the runner writes it
