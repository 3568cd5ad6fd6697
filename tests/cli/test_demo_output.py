"""`make demo` leaves what it tells a person to open in a folder that stays (not its temp folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanroom.cli import demo

POINTS = [("validate the submitted weights", 0.5, {"value": 0.8, "ci95": [0.7, 0.9]}),
          ("fine-tune", 1.0, {"value": 0.85, "ci95": [0.78, 0.92]}),
          ("fine-tune", 3.0, {"value": 0.9, "ci95": [0.85, 0.95]})]


def _fake_run(temp_folders: list[Path]):
    """Stands in for the server flow: the demo's output-writing steps, in the order run_jobs takes them."""
    def run(workdir: Path, output: demo.DemoOutput) -> None:
        temp_folders.append(workdir)
        for number, (title, epsilon, _) in enumerate(POINTS, start=1):
            path = output.job_report(number, title, epsilon, {"report.html": f"<html>{title}</html>".encode(), "metrics.json": b"{}"})
            print(f"HTML report: {path}")
        print(f"privacy-utility plot: {output.plot(POINTS)}")
    return run


def test_plot_and_job_reports_outlive_the_run_where_it_says(tmp_path, monkeypatch, capsys) -> None:
    temp_folders: list[Path] = []
    monkeypatch.setattr(demo, "run", _fake_run(temp_folders))
    monkeypatch.chdir(tmp_path)
    assert demo.main([]) == 0
    printed = capsys.readouterr().out
    named = [Path(line.split(": ", 1)[1]) for line in printed.splitlines() if line.startswith(("HTML report: ", "privacy-utility plot: "))]
    assert len(named) == 4 and all(path.is_file() for path in named)
    assert all(path.parent == tmp_path / "demo-output" for path in named)  # the default, under the current directory
    assert (tmp_path / "demo-output" / demo.PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not temp_folders[0].exists()  # the state folder goes; the output folder stays
    assert f"demo output, kept after exit: {tmp_path / 'demo-output'}" in printed.splitlines()


def test_output_option_names_the_folder_and_a_rerun_overwrites(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(demo, "run", _fake_run([]))
    chosen = tmp_path / "nested" / "out"
    for _ in range(2):
        assert demo.main(["--output", str(chosen)]) == 0
    assert sorted(p.name for p in chosen.iterdir()) == [
        "job-1-validate-the-submitted-weights-eps0.5-report.html", "job-2-fine-tune-eps1-report.html",
        "job-3-fine-tune-eps3-report.html", demo.PLOT_NAME]
    assert (chosen / "job-2-fine-tune-eps1-report.html").read_text() == "<html>fine-tune</html>"
    assert f"demo output, kept after exit: {chosen}" in capsys.readouterr().out.splitlines()


def test_a_job_without_a_report_writes_nothing(tmp_path) -> None:
    output = demo.DemoOutput.prepare(tmp_path / "out")
    assert output.job_report(1, "fine-tune", 1.0, {"metrics.json": b"{}"}) is None
    assert list((tmp_path / "out").iterdir()) == [] and "nothing" in output.summary()


def test_help_describes_the_output_folder(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        demo.main(["--help"])
    assert done.value.code == 0
    assert "--output DIR" in capsys.readouterr().out


def test_fine_tunes_use_the_budget_aware_recipe_from_public_inputs() -> None:
    import importlib.util

    from cleanroom.domain.recipe import budget_recipe

    spec = importlib.util.spec_from_file_location("example_model", demo.EXAMPLE_MODEL / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sum(p.numel() for p in module.build_model().parameters()) == demo.EXAMPLE_PARAMETERS
    recipe = budget_recipe(patients=569, epsilon=1.0, model_parameters=demo.EXAMPLE_PARAMETERS, validation_fraction=demo.VALIDATION_FRACTION)
    spec = demo.JobBase("models/m", "datasets/d").training(1.0)
    assert (spec.epochs, spec.expected_batch_patients, spec.learning_rate) == (recipe.epochs, recipe.expected_batch_patients,
                                                                               recipe.learning_rate)
    assert spec.validation_fraction == demo.VALIDATION_FRACTION and spec.target_epsilon == 1.0
