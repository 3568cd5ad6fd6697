"""The SDK's side of DP statistics: queries as messages, and checking an answer's receipt."""

from __future__ import annotations

import json
from collections.abc import Iterable

import enclave_sim
from cleanroom.stats.query import Query
from cleanroom.stats.wire import ANSWER_FILE, stats_workload
from cleanroom.v1 import stats_pb2

_KINDS = {"count": stats_pb2.STATISTIC_KIND_COUNT, "sum": stats_pb2.STATISTIC_KIND_SUM, "mean": stats_pb2.STATISTIC_KIND_MEAN,
          "variance": stats_pb2.STATISTIC_KIND_VARIANCE, "histogram": stats_pb2.STATISTIC_KIND_HISTOGRAM,
          "quantile": stats_pb2.STATISTIC_KIND_QUANTILE}
_OPS = {"==": stats_pb2.FILTER_OP_EQ, "!=": stats_pb2.FILTER_OP_NE, "<": stats_pb2.FILTER_OP_LT, "<=": stats_pb2.FILTER_OP_LE,
        ">": stats_pb2.FILTER_OP_GT, ">=": stats_pb2.FILTER_OP_GE, "in": stats_pb2.FILTER_OP_IN}
def query_to_proto(query: Query) -> stats_pb2.StatsQuery:
    """The SDK's direction: a cleanroom.stats Query as a message."""
    message = stats_pb2.StatsQuery(
        kind=_KINDS.get(query.kind, stats_pb2.STATISTIC_KIND_UNSPECIFIED), epsilon=query.epsilon, delta=query.delta,
        column=query.column or "", group_by=query.group_by or "", estimate_bounds=query.estimate_bounds,
        bins=list(query.bins or ()), quantiles=list(query.quantiles), max_rows_per_patient=query.max_rows_per_patient or 0,
        noise=stats_pb2.NOISE_KIND_GAUSSIAN if query.noise == "gaussian" else stats_pb2.NOISE_KIND_LAPLACE,
    )
    if query.bounds is not None:
        message.bounds.lower, message.bounds.upper = query.bounds
    if query.bounds_epsilon is not None:
        message.bounds_epsilon = query.bounds_epsilon
    for flt in query.filters:
        values = flt.value if flt.op == "in" else [flt.value]
        message.filters.append(stats_pb2.Filter(column=flt.column, op=_OPS.get(flt.op, stats_pb2.FILTER_OP_UNSPECIFIED), values=[_value_to_proto(v) for v in values]))
    return message


def _value_to_proto(value: object) -> stats_pb2.FilterValue:
    if isinstance(value, bool):
        return stats_pb2.FilterValue(flag=value)
    if isinstance(value, (int, float)):
        return stats_pb2.FilterValue(number=float(value))
    if hasattr(value, "isoformat"):
        return stats_pb2.FilterValue(date=value.isoformat())  # type: ignore[attr-defined]
    return stats_pb2.FilterValue(text=str(value))


def verify_answer(answer: stats_pb2.QueryAnswer, *, pinned_root_pem: bytes, allowed_measurements: Iterable[str]) -> enclave_sim.VerifiedReport:
    """Check an answer's receipt: the signature chain to the pinned root, an allowed measurement,
    the statistics workload of the answer's dataset, the signed bytes, and the ε it states.
    Raises enclave_sim.VerificationError naming the first failed check."""
    dataset_id = answer.dataset.removeprefix("datasets/")
    verified = enclave_sim.verify_report(answer.receipt, pinned_root_public_key_pem=pinned_root_pem,
                                         allowed_measurements=allowed_measurements, expected_workload=stats_workload(dataset_id),
                                         released_files={ANSWER_FILE: answer.answer_json})
    signed = json.loads(answer.answer_json)
    if abs(float(verified.report.epsilon_spent) - answer.epsilon) > 1e-9 or signed["epsilon"] != answer.epsilon:
        raise enclave_sim.VerificationError(enclave_sim.Reason.EPSILON_MISMATCH, "the answer states another ε than its receipt")
    shown = [(list(c.key), c.statistic, c.value, c.half_width) for c in answer.cells]
    if shown != [(c["key"], c["statistic"], c["value"], c["half_width"]) for c in signed["cells"]]:
        raise enclave_sim.VerificationError(enclave_sim.Reason.RELEASED_FILES_MISMATCH, "the answer's values differ from the signed ones")
    return verified
