"""The validation report a manufacturer receives: JSON and one self-contained HTML page.

Only DP outputs go in (metrics with intervals, the noisy ROC, reliability bins, operating points
and net benefit, the bin edges, the privacy parameters); no count, loss or timing that was not
released through a mechanism. Figures are inline SVG written here (the worker's sandbox loads no
plotting library), so the page needs nothing external. The page says in plain words what ε, δ,
the privacy unit, the intervals and the score bins mean.

A multi-site job's report (`Cohort`) also names its sites and their roles, says in a sentence which
sites the model never saw, who counts as one person (the linkage statement), and, when several
sites were evaluated, gives each site's metrics with intervals beside the pooled ones. A stream
job's report gives its metrics per patient and per window (trainer/stream_evaluate.py).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Sequence
from typing import Any

from cleanroom.trainer.dpsgd import TrainingResult
from cleanroom.trainer.evaluate import EvaluationResult

SIZE, PAD = 280, 40

NAMES = {"accuracy": "Accuracy at threshold 0.5", "sensitivity": "Sensitivity (true positive rate) at 0.5",
         "specificity": "Specificity (true negative rate) at 0.5", "auroc": "AUROC (area under the ROC curve)",
         "calibration": "Expected calibration error (10 equal-width bins)", "brier": "Brier score (mean squared error of the probability)",
         "macro_recall": "Macro-averaged recall", "mae": "Mean absolute error (clamped)", "rmse": "Root mean squared error (clamped)"}


def _privacy_statement(training: TrainingResult | None, evaluation: EvaluationResult | None) -> dict[str, Any]:
    parts, eps, delta = [], 0.0, 0.0
    if training is not None:
        parts.append(f"training: ({training.epsilon_spent:.3g}, {training.delta:.2g})-DP, Poisson-subsampled Gaussian "
                     f"(DP-SGD, σ = {training.noise_multiplier:.3g}, q = {training.sample_rate:.3g}, "
                     f"{training.steps} steps), accountant {training.accountant.upper()} "
                     f"(RDP cross-check ε = {training.dp_parameters.get('rdp_epsilon', float('nan')):.3g})")
        eps, delta = eps + training.epsilon_spent, delta + training.delta
    if evaluation is not None:
        count = len(evaluation.mechanism_parameters.get("statistics", {}))
        where = ""
        if evaluation.sites:
            count += sum(len(s.result.mechanism_parameters.get("statistics", {})) for s in evaluation.sites)
            where = f" (pooled and for each of {len(evaluation.sites)} sites)"
        if evaluation.per_patient is not None:
            count += len(evaluation.per_patient.mechanism_parameters.get("statistics", {}))
            where = " (per window and per patient)"
        parts.append(f"evaluation: ({evaluation.epsilon_spent:.3g}, {evaluation.delta:.2g})-DP, discrete Gaussian noise on "
                     f"{count} statistic(s){where}, zCDP composition")
        eps, delta = eps + evaluation.epsilon_spent, delta + evaluation.delta
    return {"unit": "patient", "epsilon": eps, "delta": delta, "composition": "basic (ε and δ add)",
            "statement": f"Patient-level ({eps:.3g}, {delta:.2g})-differential privacy: " + "; ".join(parts) + "."}


@dataclasses.dataclass(frozen=True)
class Cohort:
    """What a multi-site report says about its sites: names and roles in request order, and who
    counts as one person (domain.cohort.linkage_statement)."""

    sites: tuple[tuple[str, str], ...]     # (display name, "train" | "validate")
    linkage: str
    # An evaluation of a pretrained model: which sites it never saw is the requester's declaration
    # (the platform held them out of nothing); a training job held them out itself.
    declared: bool = False

    @property
    def never_seen(self) -> list[str]:
        return [name for name, role in self.sites if role == "validate"]

    def never_seen_statement(self) -> str:
        unseen = self.never_seen
        if not unseen:
            return "No site was held out whole: every site is one the model may have learned from."
        one = len(unseen) == 1
        if self.declared:
            return (f"The requester declares that the model never saw the data of {_and(unseen)}: "
                    f"{'it is its external validation site' if one else 'they are its external validation sites'}.")
        return (f"The model never saw the data of {_and(unseen)}: "
                f"{'it was held out whole as an external validation site' if one else 'they were held out whole as external validation sites'}.")

    def to_json(self) -> dict[str, Any]:
        return {"sites": [{"name": n, "role": r} for n, r in self.sites], "never_seen": self.never_seen,
                "never_seen_statement": self.never_seen_statement(), "linkage": self.linkage}


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _metric_entries(metrics: dict[str, tuple[float, float, float]]) -> dict[str, dict[str, Any]]:
    return {k: {"value": v, "ci95": [lo, hi]} for k, (v, lo, hi) in metrics.items()}


def _evaluation_data(evaluation: EvaluationResult) -> dict[str, Any]:
    data = dataclasses.asdict(dataclasses.replace(evaluation, sites=[], per_patient=None))
    del data["sites"], data["per_patient"]
    data["metrics"] = _metric_entries(evaluation.metrics)
    if evaluation.per_patient is not None:
        # A stream's evaluation: the metrics above are per window; these are per patient (their
        # mechanism is described under mechanism_parameters.per_patient).
        p = evaluation.per_patient
        data["per_patient"] = {"metrics": _metric_entries(p.metrics), "operating_points": p.operating_points,
                               "net_benefit": p.net_benefit, "roc_points": p.roc_points, "reliability": p.reliability,
                               "score_bins": p.score_bins}
    if evaluation.sites:
        # Each site's DP outputs; its mechanism is described once, under mechanism_parameters.per_site.
        data["sites"] = [{"name": s.name, "index": s.index, "metrics": _metric_entries(s.result.metrics),
                          "operating_points": s.result.operating_points, "net_benefit": s.result.net_benefit,
                          "roc_points": s.result.roc_points, "reliability": s.result.reliability}
                         for s in evaluation.sites]
    return data


def report_data(*, title: str, training: TrainingResult | None = None,
                evaluation: EvaluationResult | None = None, cohort: Cohort | None = None) -> dict[str, Any]:
    """The report as plain data (the JSON form); trained weights are shipped separately, never here.
    A multi-site job passes its `cohort`; a single-site report is as it always was."""
    data: dict[str, Any] = {"title": title, "privacy": _privacy_statement(training, evaluation)}
    if cohort is not None:
        data["cohort"] = cohort.to_json()
        data["privacy"]["unit"] = "person"
        data["privacy"]["statement"] += f" Privacy unit: {cohort.linkage}."
    if training is not None:
        data["training"] = {"epsilon": training.epsilon_spent, "delta": training.delta,
                            "accountant": training.accountant, "parameters": training.dp_parameters,
                            "released_tensors": sorted(training.trained_state)}
    if evaluation is not None:
        data["evaluation"] = _evaluation_data(evaluation)
    return data


def render_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=float)


# --- figures ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Frame:
    """A square plot: x in [x0, x1], y in [y0, y1], mapped onto SIZE pixels inside PAD."""

    x0: float = 0.0
    x1: float = 1.0
    y0: float = 0.0
    y1: float = 1.0

    def pos(self, x: float, y: float) -> tuple[float, float]:
        fx = (min(max(x, self.x0), self.x1) - self.x0) / (self.x1 - self.x0)
        fy = (min(max(y, self.y0), self.y1) - self.y0) / (self.y1 - self.y0)
        return PAD + fx * SIZE, PAD + (1 - fy) * SIZE

    def xy(self, x: float, y: float) -> str:
        return "{:.1f},{:.1f}".format(*self.pos(x, y))

    def axes(self, x_label: str, y_label: str, *, diagonal: bool = True,
             y_ticks: Sequence[float] | None = None) -> str:
        xt = [self.x0, (self.x0 + self.x1) / 2, self.x1]
        yt = list(y_ticks) if y_ticks is not None else [self.y0, (self.y0 + self.y1) / 2, self.y1]
        ticks = "".join(f'<text x="{self.pos(t, self.y0)[0]:.0f}" y="{PAD + SIZE + 14}" font-size="10" text-anchor="middle">{t:g}</text>'
                        for t in xt)
        ticks += "".join(f'<text x="{PAD - 6}" y="{self.pos(self.x0, t)[1] + 3:.0f}" font-size="10" text-anchor="end">{t:.3g}</text>'
                         for t in yt)
        diag = (f'<line x1="{PAD}" y1="{PAD + SIZE}" x2="{PAD + SIZE}" y2="{PAD}" stroke="#bbb" stroke-dasharray="4"/>'
                if diagonal else "")
        return (f'<rect x="{PAD}" y="{PAD}" width="{SIZE}" height="{SIZE}" fill="none" stroke="#444"/>{diag}{ticks}'
                f'<text x="{PAD + SIZE / 2}" y="{PAD + SIZE + 30}" font-size="11" text-anchor="middle">{x_label}</text>'
                f'<text x="12" y="{PAD + SIZE / 2}" font-size="11" text-anchor="middle" '
                f'transform="rotate(-90 12 {PAD + SIZE / 2})">{y_label}</text>')


def _svg(label: str, body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE + 2 * PAD}" height="{SIZE + 2 * PAD}" role="img" '
            f'aria-label="{html.escape(label)}">{body}</svg>')


def roc_svg(points: list[tuple[float, float]]) -> str:
    frame = _Frame()
    line = " ".join(frame.xy(x, y) for x, y in sorted(points))
    return _svg("ROC curve", frame.axes("false positive rate (1 − specificity)", "true positive rate (sensitivity)")
                + f'<polyline points="{line}" fill="none" stroke="#1f5fa8" stroke-width="2"/>')


def reliability_svg(bins: list[dict[str, float]], *, min_rows: float = 10.0) -> str:
    """Observed frequency against mean predicted probability per calibration bin, with the 95%
    interval of the observed frequency as a vertical bar; bins with fewer than `min_rows` noisy
    rows are left out (their rate is mostly noise)."""
    frame = _Frame()
    marks = []
    for b in bins:
        if b["rows"] < min_rows:
            continue
        x, y = frame.pos(b["mean_predicted"], b["observed"])
        if "observed_low" in b:
            _, y_lo = frame.pos(b["mean_predicted"], b["observed_low"])
            _, y_hi = frame.pos(b["mean_predicted"], b["observed_high"])
            marks.append(f'<line x1="{x:.1f}" y1="{y_lo:.1f}" x2="{x:.1f}" y2="{y_hi:.1f}" stroke="#c0392b" stroke-width="1.5"/>')
        marks.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="#c0392b"/>')
    return _svg("reliability diagram", frame.axes("mean predicted probability", "observed frequency") + "".join(marks))


def net_benefit_svg(entries: list[dict[str, Any]]) -> str:
    """Decision curve: net benefit of the model, of treating everyone and of treating no one at
    each named threshold, with the model's 95% intervals."""
    if not entries:
        return ""
    ts = [e["threshold"] for e in entries]
    values = [v for e in entries for v in (*e["ci95"], e["treat_all"], 0.0)]
    top = max(0.05, max(values) * 1.1)
    bottom = min(-0.05, max(min(values), -top))
    x0, x1 = 0.0, min(1.0, max(ts) * 1.25 if max(ts) < 0.8 else 1.0)
    frame = _Frame(x0, x1, bottom, top)
    everyone = " ".join(frame.xy(e["threshold"], e["treat_all"]) for e in entries)
    model = " ".join(frame.xy(e["threshold"], e["value"]) for e in entries)
    marks = [f'<line x1="{PAD}" y1="{frame.pos(0, 0)[1]:.1f}" x2="{PAD + SIZE}" y2="{frame.pos(0, 0)[1]:.1f}" stroke="#888"/>',
             f'<polyline points="{everyone}" fill="none" stroke="#888" stroke-dasharray="5 3"/>',
             f'<polyline points="{model}" fill="none" stroke="#1f5fa8" stroke-width="2"/>']
    for e in entries:
        x, y_lo = frame.pos(e["threshold"], e["ci95"][0])
        _, y_hi = frame.pos(e["threshold"], e["ci95"][1])
        marks.append(f'<line x1="{x:.1f}" y1="{y_lo:.1f}" x2="{x:.1f}" y2="{y_hi:.1f}" stroke="#1f5fa8" stroke-width="1.5"/>')
    legend = (f'<text x="{PAD + 6}" y="{PAD + 14}" font-size="10" fill="#1f5fa8">model</text>'
              f'<text x="{PAD + 6}" y="{PAD + 26}" font-size="10" fill="#666">treat all (dashed), treat none (0)</text>')
    return _svg("decision curve", frame.axes("threshold probability", "net benefit", diagonal=False,
                                             y_ticks=[bottom, 0.0, top]) + "".join(marks) + legend)


def forest_svg(metric: str, rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A forest plot: one line per row (pooled first, then each site) with the value of `metric` as a
    dot and its 95% interval as a bar, on one shared axis: how a multi-site validation is read."""
    label_width, width, step = 230, 260, 24  # a label of about 36 characters fits at 11px
    ends = [float(v) for _, entry in rows for v in entry["ci95"]]
    low, high = min(0.0, *ends), max(1.0, *ends)
    height = step * len(rows) + 56

    def x(value: float) -> float:
        return label_width + (min(max(value, low), high) - low) / (high - low) * width

    marks = []
    for index, (name, entry) in enumerate(rows):
        y = 18 + index * step
        shown = name if len(name) <= 36 else name[:35] + "…"
        marks.append(f'<text x="{label_width - 8}" y="{y + 4}" font-size="11" text-anchor="end">{html.escape(shown)}</text>'
                     f'<line x1="{x(entry["ci95"][0]):.1f}" y1="{y}" x2="{x(entry["ci95"][1]):.1f}" y2="{y}" stroke="#1f5fa8" stroke-width="2"/>'
                     f'<circle cx="{x(entry["value"]):.1f}" cy="{y}" r="4" fill="{"#222" if index == 0 else "#1f5fa8"}"/>')
    axis_y = height - 38
    ticks = "".join(f'<text x="{x(t):.1f}" y="{axis_y + 14}" font-size="10" text-anchor="middle">{t:.3g}</text>'
                    for t in (low, (low + high) / 2, high))
    axis = (f'<line x1="{label_width}" y1="{axis_y}" x2="{label_width + width}" y2="{axis_y}" stroke="#444"/>{ticks}'
            f'<text x="{label_width + width / 2}" y="{axis_y + 30}" font-size="11" text-anchor="middle">'
            f'{html.escape(metric.upper() if metric == "auroc" else metric)}: dot = value, bar = 95% interval</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + width + 20}" height="{height}" role="img" '
            f'aria-label="forest plot of {html.escape(metric)} by site">{"".join(marks)}{axis}</svg>')


def _forest_metric(metrics: dict[str, Any]) -> str | None:
    """The metric a forest plot shows: AUROC where there is one, else accuracy, else the first reported."""
    return next((m for m in ("auroc", "accuracy") if m in metrics), next(iter(sorted(metrics)), None))


# --- tables and words ------------------------------------------------------------------------

def _fmt(x: float) -> str:
    return f"{x:.3f}" if math.isfinite(x) else str(x)


def _metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{html.escape(NAMES.get(k, k))}</td><td>{_fmt(v['value'])}</td>"
                   f"<td>[{_fmt(v['ci95'][0])}, {_fmt(v['ci95'][1])}]</td></tr>" for k, v in sorted(metrics.items()))
    return f"<table><tr><th>metric</th><th>value</th><th>95% interval</th></tr>{rows}</table>"


def _operating_table(points: list[dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{html.escape(p['name'])}</td><td>{_fmt(p['value'])}</td>"
                   f"<td>[{_fmt(p['ci95'][0])}, {_fmt(p['ci95'][1])}]</td></tr>" for p in points)
    return ("<table><tr><th>operating point</th><th>value</th><th>95% interval</th></tr>" + rows + "</table>"
            "<p class=note>The best the one rate can be at a threshold where the other meets the target. The interval "
            "includes the uncertainty of where that threshold lies.</p>")


def _net_benefit_table(entries: list[dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{e['threshold']:g}</td><td>{_fmt(e['value'])}</td><td>[{_fmt(e['ci95'][0])}, {_fmt(e['ci95'][1])}]</td>"
                   f"<td>{_fmt(e['treat_all'])} [{_fmt(e['treat_all_ci95'][0])}, {_fmt(e['treat_all_ci95'][1])}]</td><td>0</td></tr>"
                   for e in entries)
    return ("<table><tr><th>threshold</th><th>net benefit</th><th>95% interval</th><th>treat all</th><th>treat none</th></tr>"
            + rows + "</table><p class=note>Net benefit (Vickers and Elkin, 2006) counts true positives per patient, "
            "minus false positives weighted by the odds of the threshold: the harm of an unnecessary treatment a clinician "
            "accepts at that threshold. A model is useful at a threshold where its net benefit is above both treating "
            "everyone and treating no one.</p>")


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "<td>—</td>"
    return f"<td>{_fmt(entry['value'])} [{_fmt(entry['ci95'][0])}, {_fmt(entry['ci95'][1])}]</td>"


def _sites_section(evaluation: dict[str, Any], cohort: dict[str, Any] | None) -> str:
    """Pooled and per-site metrics side by side, each value with its 95% interval."""
    sites = evaluation["sites"]
    roles = {s["name"]: s["role"] for s in (cohort or {}).get("sites", [])}
    head = "".join(f"<th>{html.escape(s['name'])}{' (never seen)' if roles.get(s['name']) == 'validate' else ''}</th>"
                   for s in sites)
    rows = "".join(f"<tr><td>{html.escape(NAMES.get(k, k))}</td>{_cell(evaluation['metrics'].get(k))}"
                   + "".join(_cell(s["metrics"].get(k)) for s in sites) + "</tr>"
                   for k in sorted(evaluation["metrics"]))
    metric = _forest_metric(evaluation["metrics"])
    forest = "" if metric is None else forest_svg(metric, [("pooled (all sites)", evaluation["metrics"][metric])]
                                                  + [(s["name"], s["metrics"][metric]) for s in sites if metric in s["metrics"]])
    return ("<h2>Results by site</h2>" + forest + "<table><tr><th>metric</th><th>pooled (all sites)</th>" + head + "</tr>" + rows
            + "</table><p class=note>Each cell is the value with its 95% interval. Half of the evaluation's privacy "
            "budget went to the pooled column and half to the site columns. For the site columns each person counts "
            "at one site only: the first site of the request where they have records (a person linked across sites "
            "is evaluated at that site alone), so the sites' results come from different people and together cost "
            "that half once.</p>")


def _per_patient_section(per_patient: dict[str, Any]) -> str:
    """A stream's per-patient metrics, ahead of the per-window ones below."""
    figure = roc_svg(per_patient["roc_points"]) if per_patient["roc_points"] else ""
    points = _operating_table(per_patient["operating_points"]) if per_patient["operating_points"] else ""
    scarce = (per_patient.get("score_bins") or {}).get("scarce_class")
    warning = (f"<p><strong>Too few {html.escape(scarce)} patients to tell from the privacy noise at this ε: every metric "
               "but accuracy is given with its whole range as its interval.</strong></p>") if scarce else ""
    return ("<h2>Validation metrics per patient</h2>" + warning + _metrics_table(per_patient["metrics"]) + points
            + f"<div class=figs>{figure}</div><p class=note>The examples were windows of each patient's stream. Per "
            "patient: a patient's score is the mean of its windows' predicted probabilities, and the patient counts as "
            "positive when any of its windows is. Per window (below): every evaluated window counts, at most the "
            "request's bound per patient. Half of the evaluation's privacy budget went to each.</p>")


def _cohort_section(cohort: dict[str, Any]) -> str:
    roles = "".join(f"<li>{html.escape(s['name'])}: {'external validation (held out)' if s['role'] == 'validate' else 'training'}</li>"
                    for s in cohort["sites"])
    return (f"<h2>Sites</h2><p><strong>{html.escape(cohort['never_seen_statement'])}</strong></p><ul>{roles}</ul>"
            f"<p>Who counts as one person: {html.escape(cohort['linkage'])}.</p>")


def _parameters_table(params: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in sorted(params.items()) if not isinstance(v, (dict, list)))
    return f"<table>{rows}</table>"


def _budget_table(params: dict[str, Any]) -> str:
    stats = params.get("statistics", {})
    if not stats:
        return ""
    purpose = {"score_locator": "where the scores lie (places the bins)", "score_histogram": "rows by label and score bin",
               "calibration_gaps": "Σ (label − score) per calibration bin", "squared_error_sum": "Σ (score − label)²",
               "confusion": "confusion matrix", "count": "rows", "abs_error_sum": "Σ |error|", "sq_error_sum": "Σ error²"}
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(purpose.get(k, ''))}</td>"
                   f"<td>{v.get('budget_fraction', 0):.0%}</td><td>{v['sigma']:.3g}</td><td>{v['cells']}</td></tr>"
                   for k, v in stats.items())
    return ("<table><tr><th>released statistic</th><th>what it counts</th><th>share of the budget</th>"
            "<th>noise σ</th><th>cells</th></tr>" + rows + "</table>")


def _explanations(data: dict[str, Any]) -> str:
    privacy = data["privacy"]
    eps, delta = privacy["epsilon"], privacy["delta"]
    return (
        "<h2>What the privacy numbers mean</h2><ul>"
        "<li><strong>Privacy unit: the patient.</strong> Everything below would be almost equally likely to come out "
        "whether or not any one patient's records — all of their rows — were in the data.</li>"
        f"<li><strong>ε = {eps:.3g}</strong> bounds how much more likely: any result is at most e<sup>ε</sup> ≈ "
        f"{math.exp(min(eps, 50)):.3g} times as likely with a given patient as without. Smaller is more private.</li>"
        f"<li><strong>δ = {delta:.2g}</strong> is the small chance that this bound does not hold; it is kept far below "
        "one over the number of patients.</li>"
        "<li><strong>Intervals.</strong> The data holders' records never leave the clean room; the numbers here are "
        "computed from counts to which random noise of a known size was added. Each 95% interval accounts for that "
        "noise, for the chance of which patients happened to be evaluated, and for the grouping of scores into bins "
        "(below). It is built to contain the model's true value on these patients in at least 95 of 100 "
        "evaluations; the point value is the best single guess, not more certain than its interval.</li></ul>")


def render_html(data: dict[str, Any]) -> str:
    """One self-contained page: privacy statement, what it means, metrics, the regulator's table,
    ROC, reliability and decision-curve figures, the score bins, the mechanism."""
    body = [f"<h1>{html.escape(data['title'])}</h1>",
            f"<p class=privacy><strong>Privacy.</strong> {html.escape(data['privacy']['statement'])}</p>",
            _explanations(data)]
    if data.get("cohort"):
        body.append(_cohort_section(data["cohort"]))
    evaluation = data.get("evaluation")
    if evaluation:
        if evaluation.get("sites"):
            body.append(_sites_section(evaluation, data.get("cohort")))
        title = "Validation metrics (pooled over all sites)" if evaluation.get("sites") else "Validation metrics"
        if evaluation.get("per_patient"):
            body.append(_per_patient_section(evaluation["per_patient"]))
            title = "Validation metrics per window"
        body.append(f"<h2>{title}</h2>" + _metrics_table(evaluation["metrics"]))
        if evaluation.get("operating_points"):
            body.append("<h2>Operating points</h2>" + _operating_table(evaluation["operating_points"]))
        if evaluation.get("net_benefit"):
            body.append("<h2>Net benefit</h2>" + _net_benefit_table(evaluation["net_benefit"]))
        figures = [roc_svg(evaluation["roc_points"])] if evaluation["roc_points"] else []
        figures += [reliability_svg(evaluation["reliability"])] if evaluation["reliability"] else []
        figures += [net_benefit_svg(evaluation.get("net_benefit") or [])]
        body.append(f"<div class=figs>{''.join(f for f in figures if f)}</div>")
        if evaluation["reliability"]:
            body.append("<p class=note>Reliability diagram: for each tenth of predicted probability, the share of "
                        "patients who had the outcome (dot) with its 95% interval (bar); a calibrated model sits on "
                        "the dashed diagonal. Bins with fewer than 10 (noisy) patients are not drawn.</p>")
        bins = evaluation.get("score_bins") or {}
        if bins.get("description"):
            body.append("<h3>Score bins</h3><p>" + html.escape(bins["description"]) + "</p>")
        body.append("<h3>Evaluation mechanism</h3>" + _budget_table(evaluation["mechanism_parameters"])
                    + _parameters_table(evaluation["mechanism_parameters"]))
    if data.get("training"):
        body.append("<h2>Training</h2>" + _parameters_table(data["training"]["parameters"]))
        body.append("<p>Released tensors: " + html.escape(", ".join(data["training"]["released_tensors"])) + "</p>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}"
             "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}"
             ".privacy{background:#eef4fb;padding:.8rem;border-left:4px solid #1f5fa8}.figs{display:flex;flex-wrap:wrap;gap:1rem}"
             ".note{color:#555;font-size:.9rem}")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(data['title'])}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
