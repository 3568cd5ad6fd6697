"""Crash safety: a server killed mid-upload restarts with nothing partial and nothing lost."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from cleanroom.domain.idempotency import RequestKey
from cleanroom.domain.identity import Role
from cleanroom.sdk import Client
from cleanroom.server.app import build_app, recover
from cleanroom.storage import request_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.identity import MARKER
from tests.api.test_datasets_api import _rows, _schema, _write_csv
from tests.conftest import make_config
from tests.server.test_server_process import _spawn_server, cli
from tests.storage.rows import add_released_training_job
from tests.tools import needs


def _files(directory: Path) -> list[str]:
    """The files under `directory`, less the blob store's identity marker."""
    return sorted(p.name for p in directory.rglob("*") if p.is_file() and p.name != MARKER)


@needs("bwrap")
def test_sigkill_mid_upload_then_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    admin_token = cli("admin", "bootstrap", "--state-dir", str(state)).stdout.strip()
    process, address = _spawn_server(state)
    with Client(address, admin_token) as admin:
        owner_token = admin.create_principal("Hospital", "data_owner").token
    small = _write_csv(tmp_path / "small.csv", _rows())
    big = _write_csv(tmp_path / "big.csv", _rows(3000, 40))
    with Client(address, owner_token) as owner:
        kept = owner.upload_dataset(small, _schema())
    started = threading.Event()

    def paced(sent: int, _total: int) -> None:
        # A slow client, so the server is certainly mid-stream when it is killed.
        if sent >= 2 << 20:
            started.set()
        time.sleep(0.2)

    def upload_big() -> None:
        with Client(address, owner_token) as owner:
            try:
                owner.upload_dataset(big, _schema(), request_id="big-1", progress=paced)
            except Exception:  # noqa: BLE001 - the server dies under it
                pass

    uploader = threading.Thread(target=upload_big)
    uploader.start()
    assert started.wait(20)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    uploader.join(timeout=30)

    # The dead server may leave a staging file; the next start sweeps it.
    process, address = _spawn_server(state)
    try:
        with Client(address, owner_token) as owner:
            assert [d.name for d in owner.list_datasets()] == [kept.name]
            assert owner.get_dataset(kept.name).row_count == kept.row_count
            blob_dir = state / "blobs"
            assert _files(blob_dir) == [kept.name.removeprefix("datasets/") + ".blob"]
            # The interrupted request id is free again: the retry stores the dataset once.
            retried = owner.upload_dataset(big, _schema(), request_id="big-1")
            assert retried.row_count > 0
            assert len(list(owner.list_datasets())) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_recover_removes_staging_files_keeps_unreferenced_blobs_and_releases_claims(tmp_path: Path) -> None:
    """A blob no row references stays: only `cleanroom admin gc --yes` removes it (DESIGN: nothing
    deletes a blob because a database looks empty)."""
    app = build_app(make_config(tmp_path / "state"))
    blobs = app.datasets._blobs
    pending = blobs.create("dorphan")
    pending.write(b"sealed bytes whose metadata row never landed")
    pending.commit()
    # A staging file left by a crashed server (another instance, holding no lease).
    BlobStore(app.config.blob_dir, owner="srvcrashed").create("dstage").write(b"a staging file left by a crash")
    with app.db.transaction() as session:
        request_repo.claim_request(session, RequestKey("p", "UploadDataset", "r"), "fp")
    recover(app)
    assert _files(app.config.blob_dir) == ["dorphan.blob"]
    with app.db.transaction() as session:
        assert request_repo.claim_request(session, RequestKey("p", "UploadDataset", "r"), "fp") is None
    app.close()


def test_recover_keeps_model_programs_and_job_artefacts(tmp_path: Path) -> None:
    """The orphan sweep once deleted every blob that was not a dataset: after any restart no model
    could train again and no released artefact could be downloaded."""
    app = build_app(make_config(tmp_path / "state"))
    blobs = app.datasets._blobs
    for blob_id in ("mprogram", "jdone-a0", "jdone-a1", "dorphan"):
        pending = blobs.create(blob_id)
        pending.write(b"sealed")
        pending.commit()
    maker, _ = app.principals.create("maker", Role.MANUFACTURER, actor="test")
    with app.db.transaction() as session:
        add_released_training_job(session, owner_id=maker.id, model_id="mprogram", job_id="jdone",
                                  artifacts=[("weights.safetensors", "jdone-a0"), ("receipt.json", "jdone-a1")])
    recover(app)
    assert _files(app.config.blob_dir) == ["dorphan.blob", "jdone-a0.blob", "jdone-a1.blob", "mprogram.blob"]
    app.close()
