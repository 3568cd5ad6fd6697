"""The SDK's side of DP statistics: checking an answer's receipt (queries become messages in
cleanroom.wire.stats), and the stream views a query over a stream dataset names:

    Query(kind="mean", column="heart_rate_daily_mean", group_by="cohort", bounds=(30, 200), epsilon=1,
          max_rows_per_patient=7, stream_view=stream_view("daily_mean:heart_rate"))
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import enclave_sim
from cleanroom.domain.cohort import cohort_key
from cleanroom.domain.stream_views import StreamView, parse_view
from cleanroom.statistics.engine.codec import ANSWER_FILE, stats_workload
from cleanroom.v1 import stats_pb2
from cleanroom.wire.stats import KINDS

__all__ = ["StreamView", "signed_stream_view", "stream_view", "verify_answer"]


def stream_view(text: str) -> StreamView:
    """"daily_mean:heart_rate", "readings:heart_rate", "time_in_range:spo2:90:100" as a StreamView
    (ValueError when the text has another shape; the server checks the channel and the range)."""
    return parse_view(text)


def signed_stream_view(verified: enclave_sim.VerifiedReport) -> str | None:
    """The stream view a verified receipt says its answer read ("daily_mean:heart_rate"); None for a table."""
    view = verified.report.dp_parameters.get("stream_view")
    return str(view) if view is not None else None


def verify_answer(answer: stats_pb2.QueryAnswer, *, pinned_root_pem: bytes, allowed_measurements: Iterable[str]) -> enclave_sim.VerifiedReport:
    """Check an answer's receipt: the signature chain to the pinned root, an allowed measurement,
    the statistics workload of the answer's dataset, the signed bytes, and the ε it states.
    Raises enclave_sim.VerificationError naming the first failed check."""
    # A cohort's answer is signed for the cohort's workload: the cohort key of its sites' datasets.
    sites = [site.dataset.removeprefix("datasets/") for site in answer.cohort]
    target = cohort_key(sites) if sites else answer.dataset.removeprefix("datasets/")
    verified = enclave_sim.verify_report(answer.receipt, pinned_root_public_key_pem=pinned_root_pem,
                                         allowed_measurements=allowed_measurements, expected_workload=stats_workload(target),
                                         released_files={ANSWER_FILE: answer.answer_json})
    signed = json.loads(answer.answer_json)
    if abs(float(verified.report.epsilon_spent) - answer.epsilon) > 1e-9 or signed["epsilon"] != answer.epsilon:
        raise enclave_sim.VerificationError(enclave_sim.Reason.EPSILON_MISMATCH, "the answer states another ε than its receipt")
    if _shown(answer) != _signed(signed):
        raise enclave_sim.VerificationError(enclave_sim.Reason.RELEASED_FILES_MISMATCH, "the answer's values differ from the signed ones")
    return verified


def _shown(answer: stats_pb2.QueryAnswer) -> tuple[object, ...]:
    """Every field a reader of the answer sees (a saved answer file can be edited anywhere, not only in its cells)."""
    cells = [(list(c.key), c.statistic, c.value, c.half_width, c.unit, c.level if c.HasField("level") else None) for c in answer.cells]
    bounds = [answer.bounds.lower, answer.bounds.upper] if answer.HasField("bounds") else None
    return (KINDS.get(answer.kind), answer.delta, answer.confidence, answer.mechanism, answer.rows_per_patient, bounds, cells)


def _signed(signed: dict[str, Any]) -> tuple[object, ...]:
    try:
        cells = [(c["key"], c["statistic"], c["value"], c["half_width"], c["unit"], c["level"]) for c in signed["cells"]]
        return (signed["kind"], signed["delta"], signed["confidence"], signed["mechanism"]["name"], signed["rows_per_patient"],
                signed["bounds"], cells)
    except (KeyError, TypeError) as error:
        raise enclave_sim.VerificationError(enclave_sim.Reason.MALFORMED, "the signed answer lacks a field") from error
