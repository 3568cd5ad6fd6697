"""DP statistics between their API messages and the engine's plain types, both directions: the
server reads requests with query_from_proto and writes answers with answer_to_proto; the SDK writes
requests with query_to_proto. Imports only protos, the domain and the engine's light description
types (query, kinds, answer): no numpy, pyarrow or OpenDP."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cleanroom.domain.cohort import CohortSite
from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.stream_views import DAILY_MEAN, READINGS, TIME_IN_RANGE, StreamView
from cleanroom.statistics.engine.answer import Answer
from cleanroom.statistics.engine.kinds import SPECS, StatKind
from cleanroom.statistics.engine.query import Filter, Query
from cleanroom.v1 import common_pb2, stats_pb2
from cleanroom.wire.common import cohort_from_proto, cohort_to_proto

KINDS: dict[stats_pb2.StatisticKind.ValueType, StatKind] = {stats_pb2.StatisticKind.Value(spec.proto): kind for kind, spec in SPECS.items()}
KIND_ENUMS: dict[str, stats_pb2.StatisticKind.ValueType] = {kind.value: value for value, kind in KINDS.items()}
_KIND_NAMES = list(KIND_ENUMS)
_KIND_CHOICE = ", ".join(_KIND_NAMES[:-1]) + " or " + _KIND_NAMES[-1]
NOISES = {stats_pb2.NOISE_KIND_UNSPECIFIED: "laplace", stats_pb2.NOISE_KIND_LAPLACE: "laplace", stats_pb2.NOISE_KIND_GAUSSIAN: "gaussian"}
OPS = {
    stats_pb2.FILTER_OP_EQ: "==", stats_pb2.FILTER_OP_NE: "!=", stats_pb2.FILTER_OP_LT: "<", stats_pb2.FILTER_OP_LE: "<=",
    stats_pb2.FILTER_OP_GT: ">", stats_pb2.FILTER_OP_GE: ">=", stats_pb2.FILTER_OP_IN: "in",
}
OP_ENUMS = {word: value for value, word in OPS.items()}
VIEW_KINDS = {stats_pb2.STREAM_VIEW_KIND_DAILY_MEAN: DAILY_MEAN, stats_pb2.STREAM_VIEW_KIND_READINGS: READINGS,
              stats_pb2.STREAM_VIEW_KIND_TIME_IN_RANGE: TIME_IN_RANGE}
VIEW_KIND_ENUMS = {word: value for value, word in VIEW_KINDS.items()}


def target_from_proto(dataset: str, cohort: Iterable[common_pb2.CohortSite]) -> tuple[str | None, tuple[CohortSite, ...]]:
    """What a request reads: one dataset (its id, no sites) or a cohort (None, its sites), never both."""
    sites = cohort_from_proto(cohort)
    if sites and dataset:
        raise bad_request("name either a dataset or a cohort, not both", FieldViolation("cohort", "set together with dataset"))
    if len(sites) == 1:
        raise bad_request("a cohort names at least two datasets (name one dataset in `dataset`)",
                          FieldViolation("cohort", "one site"))
    if sites:
        return None, sites
    if not dataset.startswith("datasets/") or len(dataset) <= len("datasets/"):
        raise bad_request("expected a dataset name like datasets/{id}, or a cohort", FieldViolation("dataset", "not a dataset name"))
    return dataset.removeprefix("datasets/"), ()


def query_from_proto(message: stats_pb2.StatsQuery) -> Query:
    """Shape checks only (enums, one value per filter); the rules live in cleanroom.statistics.engine."""
    violations: list[FieldViolation] = []
    kind = KINDS.get(message.kind)
    if kind is None:
        violations.append(FieldViolation("query.kind", f"choose {_KIND_CHOICE}"))
    noise = NOISES.get(message.noise)
    if noise is None:
        violations.append(FieldViolation("query.noise", "choose laplace or gaussian"))
    view = _view_from_proto(message, violations)
    filters = []
    for index, flt in enumerate(message.filters):
        converted = _filter_from_proto(flt, f"query.filters[{index}]", violations)
        if converted is not None:
            filters.append(converted)
    if violations or kind is None or noise is None:
        raise bad_request("the statistics query is invalid", *violations)
    bounds = (message.bounds.lower, message.bounds.upper) if message.HasField("bounds") else None
    return Query(
        kind=kind, epsilon=message.epsilon, delta=message.delta, column=message.column or None,
        group_by=message.group_by or None, filters=tuple(filters), bounds=bounds, estimate_bounds=message.estimate_bounds,
        bounds_epsilon=message.bounds_epsilon if message.HasField("bounds_epsilon") else None,
        bins=tuple(message.bins) or None, quantiles=tuple(message.quantiles) or (0.5,),
        max_rows_per_patient=message.max_rows_per_patient or None, noise=noise, stream_view=view,
    )


def _view_from_proto(message: stats_pb2.StatsQuery, violations: list[FieldViolation]) -> StreamView | None:
    if not message.HasField("stream_view"):
        return None
    view = message.stream_view
    kind = VIEW_KINDS.get(view.kind)
    if kind is None:
        violations.append(FieldViolation("query.stream_view.kind", "choose DAILY_MEAN, READINGS or TIME_IN_RANGE"))
        return None
    return StreamView(kind, view.channel, view.low if view.HasField("low") else None,
                      view.high if view.HasField("high") else None)


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


def query_to_proto(query: Query) -> stats_pb2.StatsQuery:
    """A cleanroom.statistics.engine Query as a message (the SDK's direction)."""
    message = stats_pb2.StatsQuery(
        kind=KIND_ENUMS.get(query.kind, stats_pb2.STATISTIC_KIND_UNSPECIFIED), epsilon=query.epsilon, delta=query.delta,
        column=query.column or "", group_by=query.group_by or "", estimate_bounds=query.estimate_bounds,
        bins=list(query.bins or ()), quantiles=list(query.quantiles), max_rows_per_patient=query.max_rows_per_patient or 0,
        noise=stats_pb2.NOISE_KIND_GAUSSIAN if query.noise == "gaussian" else stats_pb2.NOISE_KIND_LAPLACE,
    )
    if query.bounds is not None:
        message.bounds.lower, message.bounds.upper = query.bounds
    if query.bounds_epsilon is not None:
        message.bounds_epsilon = query.bounds_epsilon
    if query.stream_view is not None:
        view = query.stream_view
        message.stream_view.CopyFrom(stats_pb2.StreamView(
            kind=VIEW_KIND_ENUMS.get(view.kind, stats_pb2.STREAM_VIEW_KIND_UNSPECIFIED), channel=view.channel,
            low=view.low, high=view.high))
    for flt in query.filters:
        message.filters.append(stats_pb2.Filter(column=flt.column, op=OP_ENUMS.get(flt.op, stats_pb2.FILTER_OP_UNSPECIFIED),
                                                values=[_value_to_proto(v) for v in flt.values()]))
    return message


def _value_to_proto(value: object) -> stats_pb2.FilterValue:
    if isinstance(value, bool):
        return stats_pb2.FilterValue(flag=value)
    if isinstance(value, (int, float)):
        return stats_pb2.FilterValue(number=float(value))
    if hasattr(value, "isoformat"):
        return stats_pb2.FilterValue(date=value.isoformat())
    return stats_pb2.FilterValue(text=str(value))


def answer_to_proto(dataset_id: str, answer: Answer, *, answer_json: bytes, receipt: bytes,
                    cohort: Sequence[CohortSite] = ()) -> stats_pb2.QueryAnswer:
    """An engine Answer as the message the server returns, with the signed answer bytes and their
    receipt; a cohort's answer names its first site in `dataset` and every site in `cohort`."""
    message = stats_pb2.QueryAnswer(
        dataset=f"datasets/{dataset_id}", kind=KIND_ENUMS[answer.kind], epsilon=answer.epsilon, delta=answer.delta,
        confidence=answer.confidence, mechanism=answer.mechanism.name, rows_per_patient=answer.rows_per_patient,
        answer_json=answer_json, receipt=receipt, cohort=cohort_to_proto(cohort),
    )
    for cell in answer.cells:
        message.cells.append(stats_pb2.AnswerCell(key=list(cell.key), statistic=cell.statistic, value=cell.value,
                                                  half_width=cell.half_width, unit=cell.unit, level=cell.level))
    if answer.bounds is not None:
        message.bounds.lower, message.bounds.upper = answer.bounds
    return message
