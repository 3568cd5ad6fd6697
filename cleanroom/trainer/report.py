"""The validation report a manufacturer receives: JSON and one self-contained HTML page.

Only DP outputs go in (metrics with intervals, the noisy ROC and reliability bins, the privacy
parameters); no count, loss or timing that was not released through a mechanism. Figures are
inline SVG written here, so the page needs no plotting library and loads nothing external.
"""

from __future__ import annotations

import dataclasses
import html
import json
from typing import Any

from cleanroom.trainer.dpsgd import TrainingResult
from cleanroom.trainer.evaluate import EvaluationResult

SIZE, PAD = 280, 36


def _privacy_statement(training: TrainingResult | None, evaluation: EvaluationResult | None) -> dict[str, Any]:
    parts, eps, delta = [], 0.0, 0.0
    if training is not None:
        parts.append(f"training: ({training.epsilon_spent:.3g}, {training.delta:.2g})-DP, Poisson-subsampled Gaussian "
                     f"(DP-SGD, σ = {training.noise_multiplier:.3g}, q = {training.sample_rate:.3g}, "
                     f"{training.steps} steps), accountant {training.accountant.upper()} "
                     f"(RDP cross-check ε = {training.dp_parameters.get('rdp_epsilon', float('nan')):.3g})")
        eps, delta = eps + training.epsilon_spent, delta + training.delta
    if evaluation is not None:
        parts.append(f"evaluation: ({evaluation.epsilon_spent:.3g}, {evaluation.delta:.2g})-DP, discrete Gaussian noise on "
                     f"{len(evaluation.mechanism_parameters.get('statistics', {}))} statistic(s), zCDP composition")
        eps, delta = eps + evaluation.epsilon_spent, delta + evaluation.delta
    return {"unit": "patient", "epsilon": eps, "delta": delta, "composition": "basic (ε and δ add)",
            "statement": f"Patient-level ({eps:.3g}, {delta:.2g})-differential privacy: " + "; ".join(parts) + "."}


def report_data(*, title: str, training: TrainingResult | None = None,
                evaluation: EvaluationResult | None = None) -> dict[str, Any]:
    """The report as plain data (the JSON form); trained weights are shipped separately, never here."""
    data: dict[str, Any] = {"title": title, "privacy": _privacy_statement(training, evaluation)}
    if training is not None:
        data["training"] = {"epsilon": training.epsilon_spent, "delta": training.delta,
                            "accountant": training.accountant, "parameters": training.dp_parameters,
                            "released_tensors": sorted(training.trained_state)}
    if evaluation is not None:
        data["evaluation"] = {k: v for k, v in dataclasses.asdict(evaluation).items()}
        data["evaluation"]["metrics"] = {k: {"value": v, "ci95": [lo, hi]} for k, (v, lo, hi) in evaluation.metrics.items()}
    return data


def render_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=float)


def _pos(x: float, y: float) -> tuple[float, float]:
    return PAD + x * SIZE, PAD + (1 - y) * SIZE


def _xy(x: float, y: float) -> str:
    return "{:.1f},{:.1f}".format(*_pos(x, y))


def _axes(x_label: str, y_label: str) -> str:
    ticks = "".join(f'<text x="{PAD + t * SIZE:.0f}" y="{PAD + SIZE + 14}" font-size="10" text-anchor="middle">{t:g}</text>'
                    f'<text x="{PAD - 6}" y="{PAD + (1 - t) * SIZE + 3:.0f}" font-size="10" text-anchor="end">{t:g}</text>'
                    for t in (0, 0.5, 1))
    return (f'<rect x="{PAD}" y="{PAD}" width="{SIZE}" height="{SIZE}" fill="none" stroke="#444"/>'
            f'<line x1="{PAD}" y1="{PAD + SIZE}" x2="{PAD + SIZE}" y2="{PAD}" stroke="#bbb" stroke-dasharray="4"/>{ticks}'
            f'<text x="{PAD + SIZE / 2}" y="{PAD + SIZE + 30}" font-size="11" text-anchor="middle">{x_label}</text>'
            f'<text x="12" y="{PAD + SIZE / 2}" font-size="11" text-anchor="middle" '
            f'transform="rotate(-90 12 {PAD + SIZE / 2})">{y_label}</text>')


def roc_svg(points: list[tuple[float, float]]) -> str:
    line = " ".join(_xy(x, y) for x, y in sorted(points))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE + 2 * PAD}" height="{SIZE + 2 * PAD}" role="img" '
            f'aria-label="ROC curve">{_axes("false positive rate", "true positive rate")}'
            f'<polyline points="{line}" fill="none" stroke="#1f5fa8" stroke-width="2"/></svg>')


def reliability_svg(bins: list[dict[str, float]], *, min_rows: float = 10.0) -> str:
    centres = [_pos(b["mean_predicted"], b["observed"]) for b in bins if b["rows"] >= min_rows]
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="#c0392b"/>' for x, y in centres)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE + 2 * PAD}" height="{SIZE + 2 * PAD}" role="img" '
            f'aria-label="reliability diagram">{_axes("mean predicted probability", "observed frequency")}{dots}</svg>')


def _metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['value']:.4f}</td>"
                   f"<td>[{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]</td></tr>" for k, v in sorted(metrics.items()))
    return f"<table><tr><th>metric</th><th>value</th><th>95% interval</th></tr>{rows}</table>"


def _parameters_table(params: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in sorted(params.items()) if not isinstance(v, dict))
    return f"<table>{rows}</table>"


def render_html(data: dict[str, Any]) -> str:
    """One self-contained page: privacy statement, metrics, ROC and reliability figures, parameters."""
    body = [f"<h1>{html.escape(data['title'])}</h1>",
            f"<p class=privacy><strong>Privacy.</strong> {html.escape(data['privacy']['statement'])}</p>"]
    evaluation = data.get("evaluation")
    if evaluation:
        body.append("<h2>Validation metrics</h2>" + _metrics_table(evaluation["metrics"]))
        body.append("<p>Intervals carry both the privacy noise and sampling (parametric bootstrap).</p>")
        figures = [roc_svg(evaluation["roc_points"])] if evaluation["roc_points"] else []
        figures += [reliability_svg(evaluation["reliability"])] if evaluation["reliability"] else []
        body.append(f"<div class=figs>{''.join(figures)}</div>")
        body.append("<h3>Evaluation mechanism</h3>" + _parameters_table(evaluation["mechanism_parameters"]))
    if data.get("training"):
        body.append("<h2>Training</h2>" + _parameters_table(data["training"]["parameters"]))
        body.append("<p>Released tensors: " + html.escape(", ".join(data["training"]["released_tensors"])) + "</p>")
    style = ("body{font-family:system-ui,sans-serif;max-width:56rem;margin:2rem auto;color:#222}"
             "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}"
             ".privacy{background:#eef4fb;padding:.8rem;border-left:4px solid #1f5fa8}.figs{display:flex;gap:1rem}")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(data['title'])}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
