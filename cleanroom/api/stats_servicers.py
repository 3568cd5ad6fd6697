"""Thin servicer for DP statistics (request conversion in cleanroom.wire.stats)."""

from __future__ import annotations

import grpc

from cleanroom.api.guard import caller
from cleanroom.domain.idempotency import RequestKey
from cleanroom.server.idempotency import JournalledIdempotency, check_request_id, fingerprint
from cleanroom.statistics.service import QueryResult, StatsQueryService
from cleanroom.v1 import stats_pb2, stats_pb2_grpc
from cleanroom.wire.datasets import dataset_id_from_name
from cleanroom.wire.privacy import cost_estimate_to_proto
from cleanroom.wire.stats import KIND_ENUMS, query_from_proto


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
    def __init__(self, stats: StatsQueryService, idempotency: JournalledIdempotency) -> None:
        self._stats = stats
        self._idempotency = idempotency

    def RunQuery(self, request: stats_pb2.RunQueryRequest, context: grpc.ServicerContext) -> stats_pb2.QueryAnswer:
        check_request_id(request.request_id)
        dataset_id = dataset_id_from_name(request.dataset)
        query = query_from_proto(request.query)
        principal = caller(context)
        key = RequestKey(principal.id, "RunQuery", request.request_id)
        return self._idempotency.run(key, fingerprint(request), stats_pb2.QueryAnswer, lambda: answer_to_proto(
            dataset_id, self._stats.run(principal, dataset_id, query, privacy_request=request.privacy_request)))

    def EstimateQuery(self, request: stats_pb2.EstimateQueryRequest, context: grpc.ServicerContext) -> stats_pb2.QueryEstimate:
        dataset_id = dataset_id_from_name(request.dataset)
        estimate = self._stats.estimate(caller(context), dataset_id, query_from_proto(request.query))
        return stats_pb2.QueryEstimate(epsilon=estimate.cost.epsilon_value, delta=estimate.cost.delta_value,
                                       expected_error=estimate.expected_error, budget=cost_estimate_to_proto(estimate.budget))
