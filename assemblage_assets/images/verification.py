"""When ``r2_objects`` last checked every object of a shard against the store: owns
``shard_verifications``.

A shard is *settled* for a store when nothing of it is waiting to be published and every image
was already published when the last full check of that store confirmed its objects. A settled
shard's rerun skips listing the bucket; the ``objects_in_store`` check keeps sampling it, a
sample that finds a gap unsettles it, and ``verify_shard_objects_job`` checks everything again.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row

from assemblage_assets.constants import DERIVED_STATUSES, ImageStatus
from resources.object_store import ObjectStore


def store_fingerprint(store: ObjectStore) -> str:
    """Location and URL bases: a new bucket, prefix or public base URL is not the store we checked."""
    probe = store.key("x")
    return f"{store.describe()} | {store.url('public', probe)} | {store.url('private', probe)}"


@dataclass(frozen=True)
class Settlement:
    settled: bool
    images: int  # images of the shard in a derived status
    reason: str  # why the shard needs a full check, or when it was last verified


def settlement(conn: psycopg.Connection, shard: str, store: ObjectStore) -> Settlement:
    """Whether ``r2_objects`` has anything to do for ``shard`` in ``store`` (one query)."""
    row = conn.cursor(row_factory=dict_row).execute(
        """SELECT v.verified_at, s.images, s.processed, s.unpublished, s.last_upload
           FROM (SELECT count(DISTINCT p.image_id) AS images,
                        count(*) FILTER (WHERE p.status = %(processed)s) AS processed,
                        count(*) FILTER (WHERE i.uploaded_at IS NULL OR i.original_url IS NULL
                                         OR i.thumbnail_url IS NULL OR i.preview_url IS NULL) AS unpublished,
                        max(i.uploaded_at) AS last_upload
                 FROM processing_log p JOIN images i ON i.id = p.image_id
                 WHERE p.shard = %(shard)s AND p.status = ANY(%(derived)s)) s
           LEFT JOIN shard_verifications v ON v.shard = %(shard)s AND v.store = %(store)s""",
        {"shard": shard, "store": store_fingerprint(store), "processed": ImageStatus.PROCESSED.value,
         "derived": list(DERIVED_STATUSES)},
    ).fetchone()
    images = int(row["images"])
    if row["processed"]:
        return Settlement(False, images, f"{row['processed']} path(s) waiting to be published")
    if store.existence_check == "none":
        return Settlement(True, images, "SKIP_R2_HEAD: stored objects are not checked")
    if row["unpublished"]:
        return Settlement(False, images, f"{row['unpublished']} path(s) without all three URLs")
    if images == 0:
        return Settlement(True, 0, "no derived images in the shard")
    if row["verified_at"] is None:
        return Settlement(False, images, "never fully verified against this store")
    if row["last_upload"] is not None and row["last_upload"] > row["verified_at"]:
        return Settlement(False, images, "images published since the last full check")
    return Settlement(True, images, f"every object verified at {row['verified_at']:%Y-%m-%d %H:%M:%S %Z}")


def record_verified(conn: psycopg.Connection, shard: str, store: ObjectStore, images: int) -> None:
    """Every object of the shard's published images was confirmed in ``store`` just now."""
    conn.execute(
        """INSERT INTO shard_verifications (shard, store, verified_at, images) VALUES (%s, %s, now(), %s)
           ON CONFLICT (shard, store) DO UPDATE SET verified_at = now(), images = EXCLUDED.images""",
        (shard, store_fingerprint(store), images),
    )


def unsettle(conn: psycopg.Connection, shard: str, store: ObjectStore | None = None) -> None:
    """Forget the shard's full checks (of ``store``, or every store): the next run lists again."""
    if store is None:
        conn.execute("DELETE FROM shard_verifications WHERE shard = %s", (shard,))
    else:
        conn.execute("DELETE FROM shard_verifications WHERE shard = %s AND store = %s", (shard, store_fingerprint(store)))
