"""Statistics workers run on the backend the registry gives them: with `--sandbox runsc` a real
server answers a DP query from a warm worker under gVisor (runsc --platform=ptrace), and counts it
under that backend. (Under "auto" they run in bubblewrap: tests/statistics/test_stats_e2e.py.)"""

from __future__ import annotations

import pytest

from cleanroom.cli import samples
from cleanroom.domain.identity import Role
from cleanroom.sdk.schema import Schema
from cleanroom.statistics.engine import Query
from tests.conftest import internal_calls, make_config, start_server
from tests.tools import needs

pytestmark = needs("runsc")


def _started(app, backend: str) -> float:  # type: ignore[no-untyped-def]
    labels = {"backend": backend, "purpose": "statistics"}
    return app.metrics.registry.get_sample_value("cleanroom_sandbox_starts_total", labels) or 0.0


def test_a_statistics_query_is_answered_by_a_worker_under_gvisor(tmp_path) -> None:  # type: ignore[no-untyped-def]
    running = start_server(make_config(tmp_path / "state", work_dir=tmp_path / "work", sandbox="runsc",
                                       stats_allowance_idle=600.0))
    try:
        _, owner_token = running.principal(Role.DATA_OWNER)
        maker_id, maker_token = running.principal(Role.MANUFACTURER)
        _, officer_token = running.principal(Role.PRIVACY_OFFICER)
        owner, maker, officer = (running.client(t) for t in (owner_token, maker_token, officer_token))
        source = samples.write_breast_cancer_csv(tmp_path / "bc.csv")
        dataset = owner.upload_dataset(source, Schema(samples.breast_cancer_schema(), 5))
        officer.set_budget(dataset.name, epsilon=20, delta=1e-4, reason="total")
        officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=10, delta=1e-4, reason="pilot")
        officer.set_approval_policy(dataset.name, max_epsilon=5, auto_approve_epsilon=2, reason="routine")

        answer = maker.run_query(dataset.name, Query(kind="count", epsilon=0.5))
        assert answer.epsilon == pytest.approx(0.5) and len(answer.cells) == 1
        assert 400 < answer.cells[0].value < 600  # 569 patients before intake's k-anonymity suppression, plus noise
        again = maker.run_query(dataset.name, Query(kind="mean", column="mean_radius", bounds=(0.0, 40.0), epsilon=0.5))
        assert again.cells[0].statistic == "mean"  # the same warm worker answers the next query

        assert _started(running.app, "runsc") == 1 and _started(running.app, "bwrap") == 0
        assert dataset.name.removeprefix("datasets/") in running.app.stats_pool.warm_datasets()
        for client in (owner, maker, officer):
            client.close()
    finally:
        running.server.stop(grace=0)
    assert internal_calls(running.app) == {}
