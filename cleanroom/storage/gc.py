"""`cleanroom admin gc`: the only thing that deletes a blob no row references, and only when told to.

Start-up never removes unreferenced blobs (a database that looks empty is not a reason to delete
data). An operator lists them with `--dry-run` and removes them with `--yes`, after the storage
identity check has passed (storage/identity.py), so a wrong or empty database can never make
every blob look unreferenced. Each removal is logged; the list is written to the audit log
before the first blob goes. Blobs younger than `min_age_s` are left alone: an upload commits its
blob a moment before its row.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from cleanroom.storage import audit_repo
from cleanroom.storage.blobs import BlobStore
from cleanroom.storage.db import Database
from cleanroom.storage.identity import Identity, referenced_blob_ids

log = logging.getLogger(__name__)

ACTOR = "local-admin-gc"


@dataclass
class GcReport:
    unreferenced: list[tuple[str, int]] = field(default_factory=list)   # (blob id, bytes)
    too_recent: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    referenced: int = 0


def collect(db: Database, blob_dir: Path, identity: Identity, *, delete: bool, min_age_s: float) -> GcReport:
    """Lists the blobs no row references (older than min_age_s); removes them only with `delete`."""
    store = BlobStore(blob_dir)
    with db.engine.connect() as connection:
        referenced = referenced_blob_ids(connection)
    report = GcReport(referenced=len(referenced & set(store.list_ids())))
    cutoff = time.time() - min_age_s
    for blob_id in store.list_ids():
        if blob_id in referenced:
            continue
        try:
            info = store.path_of(blob_id).stat()
        except FileNotFoundError:
            continue
        if info.st_mtime > cutoff:
            report.too_recent.append(blob_id)
        else:
            report.unreferenced.append((blob_id, info.st_size))
    if not delete or not report.unreferenced:
        return report
    with db.transaction() as session:
        # Re-read in the same transaction as the audit entry: a row that appeared meanwhile keeps its blob.
        still = referenced_blob_ids(session.connection())
        report.unreferenced = [(b, size) for b, size in report.unreferenced if b not in still]
        audit_repo.append(session, actor=ACTOR, action="blobs.gc", target=f"blobstores/{identity.blob_store_id}",
                          details={"blobs": [b for b, _ in report.unreferenced],
                                   "bytes": sum(size for _, size in report.unreferenced),
                                   "database": identity.database_id})
    for blob_id, size in report.unreferenced:
        store.delete(blob_id)
        report.removed.append(blob_id)
        log.warning("admin gc removed unreferenced blob %s (%d bytes) from %s", blob_id, size, blob_dir)
    return report
