"""releases.proto <-> domain: release pages and the listing's filters."""

from __future__ import annotations

import json
from collections.abc import Iterable

from cleanroom.domain.errors import FieldViolation, bad_request
from cleanroom.domain.privacy import LedgerEvent
from cleanroom.domain.releases import Release, ReleaseKind
from cleanroom.v1 import jobs_pb2, releases_pb2
from cleanroom.wire.common import known_enum, timestamp
from cleanroom.wire.privacy import amount_to_proto, event_to_proto

_KIND_TO_PROTO: dict[ReleaseKind, releases_pb2.ReleaseKind.ValueType] = {
    ReleaseKind.TRAINING: releases_pb2.RELEASE_KIND_TRAINING,
    ReleaseKind.EVALUATION: releases_pb2.RELEASE_KIND_EVALUATION,
    ReleaseKind.STATISTICS: releases_pb2.RELEASE_KIND_STATISTICS,
}
KINDS: dict[int, ReleaseKind] = {int(v): k for k, v in _KIND_TO_PROTO.items()}


def kind_from_proto(value: int) -> ReleaseKind | None:
    return known_enum(value, KINDS, "kind")


def optional_id(name: str, prefix: str, field: str) -> str | None:
    """A filter's "prefix/{id}" as its id; "" is no filter; any other shape is the caller's mistake."""
    if not name:
        return None
    if not name.startswith(prefix) or len(name) == len(prefix):
        raise bad_request(f"expected {field} like {prefix}{{id}}", FieldViolation(field, f"not a {prefix.rstrip('/')} name"))
    return name[len(prefix):]


def release_to_proto(release: Release, ledger_events: Iterable[LedgerEvent] = (), *, page: bool = True) -> releases_pb2.Release:
    """`page`: the whole release page (receipt, ledger events, audit entries); a listing leaves them out."""
    workload = release.workload
    message = releases_pb2.Release(
        name=release.resource_name, kind=_KIND_TO_PROTO[release.kind], datasets=[f"datasets/{d}" for d in release.dataset_ids],
        manufacturer=f"principals/{release.manufacturer_id}", released_at=timestamp(release.released_at),
        spent=amount_to_proto(release.spent),
        artifacts=[jobs_pb2.Artifact(name=f.name, sha256=f.sha256, size_bytes=f.size_bytes) for f in release.files],
        source=release.source, summary=release.summary,
        workload=releases_pb2.ReleaseWorkload(
            dataset_key=workload.dataset_key, model=workload.model, model_sha256=workload.model_sha256,
            parameters_json=json.dumps(workload.parameters, sort_keys=True) if workload.model else ""),
    )
    if page:
        message.receipt = release.receipt
        message.ledger_events.extend(event_to_proto(e) for e in ledger_events)
        message.audit_seqs.extend(release.audit_seqs)
    return message
