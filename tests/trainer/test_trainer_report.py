"""The validation report: self-contained HTML with an SVG ROC, JSON, and the privacy statement."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET

import numpy as np
import torch

from cleanroom.trainer import report
from cleanroom.trainer.dpsgd import train
from cleanroom.trainer.evaluate import evaluate
from tests.trainer.test_trainer_helpers import MLP, allowed_here, export, fixed_seed, separable_data


def test_report_states_privacy_and_embeds_the_roc() -> None:
    torch.manual_seed(15)
    program = export(MLP())
    X, y = separable_data(800, seed=9)
    trained = train(program, X=X[:600], y=y[:600], patient=np.arange(600), task="binary-classification",
                    num_classes=2, trainable=["*"], target_epsilon=2.0, target_delta=1e-5, epochs=2,
                    expected_batch_patients=100, max_rows_per_patient=1, learning_rate=0.5, optimizer="sgd",
                    clipping_norm=1.0, seed_source=fixed_seed(3), allowed_modules=allowed_here())
    evaluated = evaluate(program, X=X[600:], y=y[600:], patient=np.arange(200), task="binary-classification",
                         num_classes=2, target_epsilon=1.0, target_delta=1e-4, max_rows_per_patient=1,
                         metrics=["accuracy", "auroc", "calibration"], state=trained.trained_state,
                         noise_rng=random.Random(1), allowed_modules=allowed_here())
    data = report.report_data(title="arrhythmia-mlp 1.0.0 <validation>", training=trained, evaluation=evaluated)
    page = report.render_html(data)
    assert page.startswith("<!doctype html>") and "<svg" in page and "<script" not in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing loaded from outside
    assert "&lt;validation&gt;" in page and "<validation>" not in page
    ET.fromstring(report.roc_svg(evaluated.roc_points))  # well-formed SVG
    ET.fromstring(report.reliability_svg(evaluated.reliability))
    ET.fromstring(report.net_benefit_svg(data["evaluation"]["net_benefit"]))
    assert 'aria-label="reliability diagram"' in page and 'aria-label="decision curve"' in page
    for words in ("Privacy unit: the patient", "ε = ", "δ = ", "95 of 100", "Operating points", "sensitivity at specificity ≥ 0.95",
                  "Net benefit", "treat all", "Score bins", "follow the model", "Brier score", "share of the budget"):
        assert words in page, words
    statement = data["privacy"]["statement"]
    assert "Patient-level" in statement and "PRV" in statement and "discrete Gaussian" in statement
    assert data["privacy"]["epsilon"] == trained.epsilon_spent + evaluated.epsilon_spent
    parsed = json.loads(report.render_json(data))
    assert parsed["training"]["released_tensors"] == sorted(trained.trained_state)
    assert set(parsed["evaluation"]["metrics"]) == {"accuracy", "auroc", "calibration", "brier"}
    assert parsed["evaluation"]["accountant"] == "zcdp-rdp" and parsed["privacy"]["unit"] == "patient"
