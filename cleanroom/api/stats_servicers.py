"""Thin servicer for DP statistics (request and answer conversion in cleanroom.wire.stats)."""

from __future__ import annotations

import grpc

from cleanroom.api.guard import caller
from cleanroom.domain.idempotency import RequestKey
from cleanroom.server.idempotency import JournalledIdempotency, check_request_id, fingerprint
from cleanroom.statistics.service import StatsQueryService
from cleanroom.v1 import stats_pb2, stats_pb2_grpc
from cleanroom.wire import stats as stats_wire
from cleanroom.wire.privacy import cost_estimate_to_proto


class StatsServicer(stats_pb2_grpc.StatsServiceServicer):
    def __init__(self, stats: StatsQueryService, idempotency: JournalledIdempotency) -> None:
        self._stats = stats
        self._idempotency = idempotency

    def RunQuery(self, request: stats_pb2.RunQueryRequest, context: grpc.ServicerContext) -> stats_pb2.QueryAnswer:
        check_request_id(request.request_id)
        dataset_id, sites = stats_wire.target_from_proto(request.dataset, request.cohort)
        query = stats_wire.query_from_proto(request.query)
        principal = caller(context)
        key = RequestKey(principal.id, "RunQuery", request.request_id)

        def answer() -> stats_pb2.QueryAnswer:
            if sites:
                result = self._stats.run_cohort(principal, sites, query, privacy_request=request.privacy_request)
                return stats_wire.answer_to_proto(sites[0].dataset_id, result.answer, answer_json=result.answer_json,
                                                  receipt=result.receipt, cohort=sites)
            result = self._stats.run(principal, dataset_id, query, privacy_request=request.privacy_request)
            return stats_wire.answer_to_proto(dataset_id or "", result.answer, answer_json=result.answer_json, receipt=result.receipt)

        return self._idempotency.run(key, fingerprint(request), stats_pb2.QueryAnswer, answer)

    def EstimateQuery(self, request: stats_pb2.EstimateQueryRequest, context: grpc.ServicerContext) -> stats_pb2.QueryEstimate:
        dataset_id, sites = stats_wire.target_from_proto(request.dataset, request.cohort)
        query = stats_wire.query_from_proto(request.query)
        if sites:
            estimate = self._stats.estimate_cohort(caller(context), sites, query)
        else:
            estimate = self._stats.estimate(caller(context), dataset_id, query)
        return stats_pb2.QueryEstimate(epsilon=estimate.cost.epsilon_value, delta=estimate.cost.delta_value,
                                       expected_error=estimate.expected_error, budget=cost_estimate_to_proto(estimate.budget),
                                       site_budgets=[cost_estimate_to_proto(b) for b in estimate.site_budgets],
                                       linkage=estimate.linkage)
