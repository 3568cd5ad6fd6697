"""The SDK's side of DP statistics: checking an answer's receipt (queries become messages in
cleanroom.statspec)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import enclave_sim
from cleanroom.stats.wire import ANSWER_FILE, stats_workload
from cleanroom.v1 import stats_pb2


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
