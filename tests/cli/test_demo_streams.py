"""The demo's stream study, in its pure parts: its windows fit the example CNN's input, its label rule
reads as the SDK parses it, its data is a referral population's nights, and its validation table
shows the per-window and per-patient views from a report's metrics.json. (`make demo` runs it
against a real server end to end.)"""

from __future__ import annotations

import tomllib

from cleanroom.cli import demo_streams as ds
from cleanroom.sdk.streams import parse_label_rule, window_spec


def test_the_windows_fit_the_example_model_and_the_rule_parses() -> None:
    manifest = tomllib.loads((ds.CNN_MODEL / "cleanroom-model.toml").read_text())
    assert manifest["input_shape"] == [len(ds.CHANNELS), ds.WINDOW // ds.RESAMPLE]
    assert ds.RESAMPLE % ds.SIZE.seconds_per_reading == 0 and ds.WINDOW <= ds.SIZE.days * 86400
    rule = parse_label_rule(ds.LABEL_RULE)
    assert (rule.channel, rule.comparison, rule.threshold, rule.for_seconds) == ("spo2", "below", 90.0, 30)
    assert window_spec(ds.WINDOW, ds.STRIDE, ds.RESAMPLE, label_rule=ds.LABEL_RULE).label_rule.for_seconds == 30
    spec = ds.training_spec("models/m", "datasets/d")
    assert list(spec.feature_columns) == ds.CHANNELS and spec.label_column == "" and spec.max_rows_per_patient == ds.WINDOWS_PER_PATIENT
    assert ds.SIZE.condition_share is not None and ds.SIZE.condition_share < 0.5  # still a minority


def _point(metric: str, fixed: str, value: float) -> dict[str, object]:
    return {"metric": metric, "fixed": fixed, "target": 0.95, "value": value, "ci95": [value - 0.1, value + 0.05]}


def test_the_validation_table_shows_both_views_with_intervals() -> None:
    metrics = {"evaluation": {
        "metrics": {"auroc": {"value": 0.857, "ci95": [0.51, 1.0]}},
        "operating_points": [_point("sensitivity", "specificity", 0.7), _point("specificity", "sensitivity", 0.4)],
        "per_patient": {"metrics": {"auroc": {"value": 0.821, "ci95": [0.52, 1.0]}}, "operating_points": []}}}
    table = ds.validation_table(metrics)
    window, patient = (line for line in table.splitlines() if line.startswith("per "))
    assert "0.857 [0.51, 1.00]" in window and "0.700 [0.60, 0.75]" in window and "0.400 [0.30, 0.45]" in window
    assert patient.startswith("per patient") and "0.821 [0.52, 1.00]" in patient and patient.rstrip().endswith("-")


def test_the_validation_table_says_when_a_view_cannot_tell_its_positives_from_the_noise() -> None:
    metrics = {"evaluation": {
        "metrics": {"auroc": {"value": 0.95, "ci95": [0.0, 1.0]}}, "operating_points": [],
        "score_bins": {"scarce_class": "positives"},
        "per_patient": {"metrics": {"auroc": {"value": 0.99, "ci95": [0.93, 1.0]}}, "operating_points": [],
                        "score_bins": {"scarce_class": ""}}}}
    notes = [line for line in ds.validation_table(metrics).splitlines() if "too few" in line]
    assert notes == ["per window: too few positives to tell from the privacy noise at this ε, so its intervals span "
                     "the whole range (the report says so too)"]
