"""Plain-text rendering for the CLI and the demo: tables and the intake report."""

from __future__ import annotations

from collections.abc import Sequence

from cleanroom.v1 import common_pb2, datasets_pb2, privacy_pb2


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def role_name(role: common_pb2.Role.ValueType) -> str:
    return common_pb2.Role.Name(role).lower()


def _column_rule(column: datasets_pb2.ColumnSpec) -> str:
    rule = column.generalization
    kind = rule.WhichOneof("rule")
    if kind == "age_band":
        return f"age band {rule.age_band.width}y, {rule.age_band.top_code or 90}+"
    if kind == "date":
        return "to " + datasets_pb2.DatePrecision.Name(rule.date).lower()
    if kind == "prefix":
        return f"keep {rule.prefix.keep} chars"
    return "suppressed" if kind == "suppress" else ""


def _column_domain(column: datasets_pb2.ColumnSpec) -> str:
    """What a column's values can be: its generalisation, label classes or declared categories."""
    parts = [_column_rule(column)]
    if column.label_classes:
        parts.append(f"{column.label_classes} classes (0..{column.label_classes - 1})")
    if column.categories:
        shown = ", ".join(column.categories[:10]) + (", …" if len(column.categories) > 10 else "")
        parts.append(f"categories {shown}")
    return "; ".join(p for p in parts if p)


def columns_table(dataset: datasets_pb2.Dataset) -> str:
    rows = [
        (c.name, datasets_pb2.ColumnType.Name(c.type).lower(), datasets_pb2.ColumnRole.Name(c.role).lower(), _column_domain(c))
        for c in dataset.columns
    ]
    return table(("column", "type", "role", "generalisation / classes / categories"), rows)


def intake_report(dataset: datasets_pb2.Dataset) -> str:
    r = dataset.intake_report
    kept = f"{r.rows_stored:,} of {r.rows_received:,}"
    lines = [
        f"Dataset {dataset.name}  ({dataset.display_name})",
        f"  received          {r.bytes_received:,} bytes, {r.rows_received:,} rows",
        f"  stored            {kept} rows, {dataset.patient_count:,} patients",
        f"  k-anonymity       k={r.k_anonymity}: {r.classes_suppressed:,} of {r.equivalence_classes:,} "
        f"quasi-identifier classes suppressed ({r.rows_suppressed:,} rows)",
        f"  no patient key    {r.rows_without_patient_key:,} rows dropped",
        f"  dropped columns   {', '.join(r.dropped_columns) or '-'}",
        f"  pseudonymised     {', '.join(r.pseudonymized_columns) or '-'} (keyed HMAC-SHA256)",
        f"  linkage           {r.linkage_column or '-'}"
        + (f" (platform-wide pseudonym; {r.rows_without_linkage_id:,} rows unlinked)" if r.linkage_column else ""),
    ]
    lines += [f"  generalised       {g.name}: {g.rule}" for g in r.generalized_columns]
    lines += [f"  note              {n}" for n in r.notes]
    if r.HasField("stream"):
        lines += stream_summary(r.stream)
    lines.append(f"  ciphertext        sha256 {dataset.ciphertext_sha256}")
    return "\n".join(lines)


def _duration(seconds: int) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds} s"


def stream_summary(s: datasets_pb2.StreamIntakeSummary) -> list[str]:
    """The stream part of an intake report: readings, spans, gaps and what was done to the times."""
    shifted = f"each patient's times shifted by a secret offset of up to {s.max_shift_days} days" if s.max_shift_days else "not shifted"
    return [
        f"  readings          {s.readings:,} stored, {s.patients:,} patients; {s.readings_merged:,} merged into their "
        f"{s.time_resolution_seconds} s cell",
        f"  span per patient  shortest {_duration(s.shortest_span_seconds)}, median {_duration(s.median_span_seconds)}, "
        f"longest {_duration(s.longest_span_seconds)}",
        f"  gaps              {s.gaps:,} pauses longer than {s.gap_seconds} s",
        f"  times             {shifted}; time zone {s.time_zone or 'none (epoch seconds)'}",
    ] + [f"  channel           {c.channel} ({c.unit}): {c.readings:,} readings" for c in s.channels]


def stream_description(dataset: datasets_pb2.Dataset) -> str:
    """What is public about a stream: whoever sees its schema sees this."""
    d = dataset.stream
    channels = ", ".join(f"{c.channel} ({c.unit})" for c in d.channels)
    return "\n".join([f"Stream: time column {d.time_column}, resolution {d.time_resolution_seconds} s, "
                      f"longest patient span {d.longest_span_hours} h (floored to whole hours)",
                      f"  channels          {channels}"])


def bar(used: float, total: float, width: int = 20) -> str:
    """Remaining budget as a bar: filled for what is left, shaded for what is used or reserved."""
    if total <= 0:
        return "░" * width
    left = max(0.0, min(1.0, (total - used) / total))
    filled = round(left * width)
    return "█" * filled + "░" * (width - filled)


def budget_table(report: privacy_pb2.BudgetReport) -> str:
    rows = []
    for b in report.budgets:
        who = f"{b.manufacturer_display_name} ({b.manufacturer})" if b.manufacturer else "(whole dataset)"
        used = b.reserved.epsilon + b.spent.epsilon
        rdp = f"{b.rdp_composition_epsilon:.3g}" if b.rdp_composition_epsilon else "-"
        rows.append((
            who, bar(used, b.cap.epsilon), f"{b.remaining.epsilon:g} of {b.cap.epsilon:g}",
            f"{b.spent.epsilon:g}", f"{b.reserved.epsilon:g}", f"{b.remaining.delta:.2g}", f"{b.basic_composition_epsilon:g} / {rdp}",
        ))
    policy = report.policy
    header = (
        f"{report.dataset}  ({report.dataset_display_name})\n"
        f"policy: at most ε {policy.max_epsilon_per_request:g} and δ {policy.effective_max_delta:.2g} per request; "
        f"auto-approve up to ε {policy.auto_approve_epsilon:g}\n"
    )
    lines = [table(("budget", "ε left", "ε left / cap", "spent", "reserved", "δ left", "ε basic / RDP"), rows)] if rows else []
    return header + "\n".join(lines + _missing_budgets(report))


def _missing_budgets(report: privacy_pb2.BudgetReport) -> list[str]:
    """Plain words for what an empty or partial table would leave unsaid."""
    notes = []
    if not report.dataset_cap_set:
        notes.append(f"whole dataset: NO CAP SET, so nothing can be spent on this dataset until a privacy officer sets one "
                     f"(cleanroom privacy budget {report.dataset} --epsilon E --delta D --reason …)")
    if not any(b.manufacturer for b in report.budgets):
        notes.append(f"shares: none; a manufacturer can use this dataset only once it is shared "
                     f"(cleanroom privacy share {report.dataset} principals/ID --epsilon E --delta D --reason …)")
    return notes


def cost_estimate(estimate: privacy_pb2.CostEstimate) -> str:
    """A dry run's verdict, its reasons, and each visible budget now and after."""
    lines = [f"cost ε {estimate.cost.epsilon:g}, δ {estimate.cost.delta:.2g}: {estimate.decision.replace('_', ' ')}; "
             f"{'fits' if estimate.fits else 'does NOT fit'}"]
    for reason in estimate.details:
        lines.append(f"  - {reason.outcome.replace('_', ' ')}: {reason.message}")
        lines.append(f"      to go ahead: {reason.remedy}")
    if not estimate.details:  # a server from before structured reasons
        lines += [f"  - {reason}" for reason in estimate.reasons]
    after = {b.name: b for b in estimate.remaining_after}  # none when it cannot be reserved
    absent = "does not fit" if not estimate.fits else "refused"
    rows = [(now.name, f"{now.remaining.epsilon:g}", f"{after[now.name].remaining.epsilon:g}" if now.name in after else absent)
            for now in estimate.remaining_before]
    lines.append(table(("budget", "ε left now", "ε left after"), rows))
    lines += [f"note: {note}" for note in estimate.notes]
    return "\n".join(lines)
