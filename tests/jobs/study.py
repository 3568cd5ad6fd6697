"""One breast-cancer study on a real server: a hospital's upload, an officer's budget, share and
approval policy, and the example model submitted by a manufacturer. Job tests open one per module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cleanroom.cli import samples
from cleanroom.domain.identity import Role
from cleanroom.sdk.schema import Schema
from tests.conftest import make_config, start_server
from tests.paths import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "breast-cancer-mlp"
FEATURES = samples.feature_names()


@contextmanager
def breast_cancer_study(base: Path) -> Iterator[dict[str, Any]]:
    running = start_server(make_config(base / "state", work_dir=base / "work"))
    _, owner_token = running.principal(Role.DATA_OWNER)
    maker_id, maker_token = running.principal(Role.MANUFACTURER)
    _, officer_token = running.principal(Role.PRIVACY_OFFICER)
    owner, maker, officer = (running.client(t) for t in (owner_token, maker_token, officer_token))
    try:
        dataset = owner.upload_dataset(samples.write_breast_cancer_csv(base / "bc.csv"), Schema(samples.breast_cancer_schema(), 5))
        officer.set_budget(dataset.name, epsilon=6, delta=1e-4, reason="total")
        officer.share_dataset(dataset.name, f"principals/{maker_id}", epsilon=5, delta=1e-4, reason="pilot")
        officer.set_approval_policy(dataset.name, max_epsilon=3, auto_approve_epsilon=1.5, reason="routine")
        model = maker.submit_model(EXAMPLE)
        yield {"running": running, "maker": maker, "maker_token": maker_token, "officer": officer,
               "dataset": dataset.name, "patients": dataset.patient_count,
               "model": model.name, "parameters": model.intake_report.trainable_parameter_count}
    finally:
        for client in (owner, maker, officer):
            client.close()
        running.server.stop(grace=0)
