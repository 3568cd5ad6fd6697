"""Server leases: the sweeper recovers a dead server's work in flight and never a live one's
(jobs, reservations, request claims, partial uploads, job scratch), on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from cleanroom.domain.idempotency import RequestKey
from cleanroom.domain.privacy import Privacy, SpendState, replay
from cleanroom.privacy.ledger import Ledger
from cleanroom.server.app import build_app, recover, recover_expired
from cleanroom.server.lease import ServerLease, utcnow
from cleanroom.storage import clock, lease_repo, privacy_repo, request_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.tables import JobRow, ServerLeaseRow
from tests.conftest import make_config
from tests.ledger_fixtures import build_world

LIVE, DEAD = "srvlive", "srvdead"


def _job(job_id: str, maker: str, spend_id: str, owner: str) -> dict[str, object]:
    return dict(id=job_id, kind="training", owner_id=maker, model_id="m", dataset_id="dset", spec_json="{}", state="running",
                failure="none", spend_id=spend_id, cancel_requested=False, created_at=clock.now(), owner=owner)


def test_sweeper_recovers_an_expired_lease_and_not_a_live_one(tmp_path: Path, database_url: str) -> None:
    work = tmp_path / "work"
    app = build_app(make_config(tmp_path / "state", database_url=database_url, work_dir=work, lease_seconds=60))
    try:
        world = build_world(app.db)
        maker = world.makers[0]
        world.budgets.share(world.officer, world.dataset_id, maker.id, Privacy.cap(9, 1e-5), "pilot")
        world.budgets.set_cap(world.officer, world.dataset_id, None, Privacy.cap(9, 1e-5), "total")
        now = utcnow()
        with app.db.transaction() as session:
            lease_repo.acquire(session, LIVE, host="elsewhere", pid=1, at=now, lease=timedelta(seconds=60))
            lease_repo.acquire(session, DEAD, host="elsewhere", pid=1, at=now - timedelta(seconds=120), lease=timedelta(seconds=60))
        spends = {}
        for owner in (LIVE, DEAD):
            ledger = Ledger(app.db, owner=owner)
            spends[owner] = {kind: ledger.reserve(world.spend(Privacy.cost(1, 1e-7)), actor_id=maker.id).id for kind in ("job", "stats")}
            ledger.mark_decrypted(spends[owner]["job"])  # the job's data was decrypted: failing it spends it
            with app.db.transaction() as session:
                session.execute(JobRow.__table__.insert().values(**_job(f"j{owner}", maker.id, spends[owner]["job"], owner)))
                request_repo.claim_request(session, RequestKey("p", "UploadDataset", owner), "fp", owner)
            part = BlobStore(app.config.blob_dir, owner=owner).create(f"d{owner}")
            part.write(b"half an upload")
            part.flush()
            (work / f"j{owner}-scratch" / "in").mkdir(parents=True)
            (work / f"j{owner}-scratch" / "in" / "dataset.blob").write_bytes(b"ciphertext copy")

        recover_expired(app)

        with app.db.read() as session:
            jobs = {row.id: (row.state, row.failure) for row in session.scalars(select(JobRow))}
            spend_state = {s: privacy_repo.get_spend(session, s).state for o in spends.values() for s in o.values()}
            leases = set(session.scalars(select(ServerLeaseRow.instance_id)))
            claims = {o: request_repo.stored_request(session, RequestKey("p", "UploadDataset", o)) for o in (LIVE, DEAD)}
            balances, events = privacy_repo.all_balances(session), privacy_repo.events(session)
        assert jobs == {f"j{DEAD}": ("failed", "server_restarted"), f"j{LIVE}": ("running", "none")}
        assert spend_state == {spends[DEAD]["job"]: SpendState.COMMITTED, spends[DEAD]["stats"]: SpendState.REFUNDED,
                               spends[LIVE]["job"]: SpendState.RESERVED, spends[LIVE]["stats"]: SpendState.RESERVED}
        assert claims == {LIVE: ("fp", None), DEAD: None}
        assert leases == {LIVE}  # the dead lease goes once its work is recovered
        parts = sorted(p.relative_to(app.config.blob_dir / "tmp").parts[0] for p in (app.config.blob_dir / "tmp").rglob("*.part"))
        assert parts == [LIVE]
        assert sorted(p.name for p in work.iterdir()) == [f"j{LIVE}-scratch"]
        assert replay(events) == balances
    finally:
        app.close()


def test_started_server_renews_its_lease_and_a_clean_stop_removes_it(tmp_path: Path) -> None:
    app = build_app(make_config(tmp_path / "state", work_dir=tmp_path / "work", lease_seconds=0.6))
    try:
        recover(app)
        assert app.lease is not None
        with app.db.read() as session:
            first = session.get(ServerLeaseRow, app.lease.instance_id).expires_at
        deadline = utcnow() + timedelta(seconds=30)
        while True:  # renewed every 0.1 s; polled, never timed
            with app.db.read() as session:
                if session.get(ServerLeaseRow, app.lease.instance_id).expires_at > first:
                    break
            assert utcnow() < deadline, "the heartbeat never renewed the lease"
            time.sleep(0.05)
        # Its own in-flight claim is not a dead server's, however often the sweeper runs.
        with app.db.transaction() as session:
            request_repo.claim_request(session, RequestKey("p", "M", "r"), "fp", app.lease.instance_id)
        recover_expired(app)
        with app.db.read() as session:
            assert request_repo.stored_request(session, RequestKey("p", "M", "r")) == ("fp", None)
    finally:
        app.close()
    with app.db.read() as session:
        assert session.get(ServerLeaseRow, app.lease.instance_id) is None


def test_a_stopped_process_on_this_node_loses_its_lease_at_once(tmp_path: Path) -> None:
    app = build_app(make_config(tmp_path / "state", work_dir=tmp_path / "work", lease_seconds=600))
    try:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        lease = ServerLease(app.db, lease_seconds=600)
        with app.db.transaction() as session:
            lease_repo.acquire(session, "srvgone", host=lease.node, pid=gone.pid, at=utcnow(), lease=timedelta(seconds=600))
            lease_repo.acquire(session, "srvother", host=lease.node + "x", pid=gone.pid, at=utcnow(), lease=timedelta(seconds=600))
        assert lease.expire_gone_neighbours() == 1
        with app.db.read() as session:
            assert lease_repo.live(session, utcnow()) == {"srvother"}  # another node's pid means nothing here
    finally:
        app.close()


def test_the_periodic_sweeper_recovers_a_peer_whose_lease_expires_while_it_runs(tmp_path: Path, database_url: str) -> None:
    app = build_app(make_config(tmp_path / "state", database_url=database_url, work_dir=tmp_path / "work", lease_seconds=0.6))
    try:
        recover(app)  # start-up: lease, heartbeat and sweeper
        with app.db.transaction() as session:  # a peer elsewhere, alive for now, with a call in flight
            lease_repo.acquire(session, "srvpeer", host="elsewhere", pid=1, at=utcnow(), lease=timedelta(seconds=2))
            request_repo.claim_request(session, RequestKey("p", "M", "peer"), "fp", "srvpeer")
        recover_expired(app)
        with app.db.read() as session:  # live: untouched
            assert request_repo.stored_request(session, RequestKey("p", "M", "peer")) == ("fp", None)
        deadline = utcnow() + timedelta(seconds=60)
        while True:  # the peer never renews: once its lease expires, the sweeper (every 0.3 s) frees its claim
            with app.db.read() as session:
                if request_repo.stored_request(session, RequestKey("p", "M", "peer")) is None:
                    break
                assert utcnow() < deadline, "the sweeper never recovered the expired peer's claim"
            time.sleep(0.05)
        with app.db.read() as session:
            assert session.get(ServerLeaseRow, "srvpeer") is None
    finally:
        app.close()
