"""Thin servicer for DP statistics, and the conversions between its messages and cleanroom.stats."""

from __future__ import annotations

from cleanroom.api import convert
from cleanroom.api.guard import CallContext
from cleanroom.api.idempotency import Idempotency, check_request_id, fingerprint
from cleanroom.api.privacy_servicers import cost_estimate_to_proto
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.queries.service import QueryResult, StatsQueryService
from cleanroom.stats import Filter, Query
from cleanroom.storage.repos import RequestKey
from cleanroom.v1 import stats_pb2, stats_pb2_grpc

KINDS = {
    stats_pb2.STATISTIC_KIND_COUNT: "count", stats_pb2.STATISTIC_KIND_SUM: "sum", stats_pb2.STATISTIC_KIND_MEAN: "mean",
    stats_pb2.STATISTIC_KIND_VARIANCE: "variance", stats_pb2.STATISTIC_KIND_HISTOGRAM: "histogram",
    stats_pb2.STATISTIC_KIND_QUANTILE: "quantile",
}
KIND_ENUMS = {name: value for value, name in KINDS.items()}
NOISES = {stats_pb2.NOISE_KIND_UNSPECIFIED: "laplace", stats_pb2.NOISE_KIND_LAPLACE: "laplace", stats_pb2.NOISE_KIND_GAUSSIAN: "gaussian"}
OPS = {
    stats_pb2.FILTER_OP_EQ: "==", stats_pb2.FILTER_OP_NE: "!=", stats_pb2.FILTER_OP_LT: "<", stats_pb2.FILTER_OP_LE: "<=",
    stats_pb2.FILTER_OP_GT: ">", stats_pb2.FILTER_OP_GE: ">=", stats_pb2.FILTER_OP_IN: "in",
}


def query_from_proto(message: stats_pb2.StatsQuery) -> Query:
    """Shape checks only (enums, one value per filter); the rules live in cleanroom.stats."""
    violations = []
    kind = KINDS.get(message.kind)
    if kind is None:
        violations.append(FieldViolation("query.kind", "choose count, sum, mean, variance, histogram or quantile"))
    noise = NOISES.get(message.noise)
    if noise is None:
        violations.append(FieldViolation("query.noise", "choose laplace or gaussian"))
    filters = []
    for index, flt in enumerate(message.filters):
        converted = _filter_from_proto(flt, f"query.filters[{index}]", violations)
        if converted is not None:
            filters.append(converted)
    if violations:
        raise bad_request("the statistics query is invalid", *violations)
    bounds = (message.bounds.lower, message.bounds.upper) if message.HasField("bounds") else None
    return Query(
        kind=kind, epsilon=message.epsilon, delta=message.delta, column=message.column or None,
        group_by=message.group_by or None, filters=tuple(filters), bounds=bounds, estimate_bounds=message.estimate_bounds,
        bounds_epsilon=message.bounds_epsilon if message.HasField("bounds_epsilon") else None,
        bins=tuple(message.bins) or None, quantiles=tuple(message.quantiles) or (0.5,),
        max_rows_per_patient=message.max_rows_per_patient or None, noise=noise,
    )


def _filter_from_proto(flt: stats_pb2.Filter, field: str, violations: list[FieldViolation]) -> Filter | None:
    op = OPS.get(flt.op)
    if op is None:
        violations.append(FieldViolation(field + ".op", "choose one of EQ, NE, LT, LE, GT, GE, IN"))
        return None
    values = [_filter_value(v) for v in flt.values]
    if any(v is None for v in values) or not values or (op != "in" and len(values) != 1):
        violations.append(FieldViolation(field + ".values", "one value (or several for IN), each with its type set"))
        return None
    return Filter(flt.column, op, tuple(values) if op == "in" else values[0])


def _filter_value(value: stats_pb2.FilterValue) -> object:
    which = value.WhichOneof("value")
    return None if which is None else getattr(value, which)


def answer_to_proto(dataset_id: str, result: QueryResult) -> stats_pb2.QueryAnswer:
    answer = result.answer
    message = stats_pb2.QueryAnswer(
        dataset=f"datasets/{dataset_id}", kind=KIND_ENUMS[answer.kind], epsilon=answer.epsilon, delta=answer.delta,
        confidence=answer.confidence, mechanism=answer.mechanism.name, rows_per_patient=answer.rows_per_patient,
        answer_json=result.answer_json, receipt=result.receipt,
    )
    for cell in answer.cells:
        message.cells.append(stats_pb2.AnswerCell(key=list(cell.key), statistic=cell.statistic, value=cell.value,
                                                  half_width=cell.half_width, unit=cell.unit, level=cell.level))
    if answer.bounds is not None:
        message.bounds.lower, message.bounds.upper = answer.bounds
    return message


class StatsServicer(stats_pb2_grpc.StatsServiceServicer):
    def __init__(self, stats: StatsQueryService, idempotency: Idempotency) -> None:
        self._stats = stats
        self._idempotency = idempotency

    def RunQuery(self, request: stats_pb2.RunQueryRequest, context: CallContext) -> stats_pb2.QueryAnswer:
        check_request_id(request.request_id)
        dataset_id = convert.dataset_id_from_name(request.dataset)
        query = query_from_proto(request.query)
        key = RequestKey(context.principal.id, "RunQuery", request.request_id)
        return self._idempotency.run(key, fingerprint(request), stats_pb2.QueryAnswer, lambda: answer_to_proto(
            dataset_id, self._stats.run(context.principal, dataset_id, query, privacy_request=request.privacy_request)))

    def EstimateQuery(self, request: stats_pb2.EstimateQueryRequest, context: CallContext) -> stats_pb2.QueryEstimate:
        dataset_id = convert.dataset_id_from_name(request.dataset)
        estimate = self._stats.estimate(context.principal, dataset_id, query_from_proto(request.query))
        return stats_pb2.QueryEstimate(epsilon=estimate.cost.epsilon_value, delta=estimate.cost.delta_value,
                                       expected_error=estimate.expected_error, budget=cost_estimate_to_proto(estimate.budget))
