"""The ``duplicates`` stage of a shard: compare its newly derived images against every image
checked before (any shard), group the near-duplicates, and in skip mode keep a near-duplicate of
a published image from being published or embedded.

Runs after ``derivatives`` and before ``r2_objects``, so the skip decision exists before any
upload or paid call. Each image is compared once, when first checked; a rerun finds nothing new
and touches no group (incremental: a shard never recomputes other shards' groups).
CLIP confirms a hash candidate where both images already have a vector of the active model.
A new image usually has none yet (embeddings come after publishing), so it is grouped on its
hashes; the shard's next ``duplicates`` run, once the vectors exist, records each member's cosine
distance to its representative and takes out those CLIP finds too far (``reconfirm``). Skipped
images are never embedded, so their grouping rests on the hashes alone.
"""

from __future__ import annotations

import time

import psycopg

from assemblage_assets.core.reports import Progress, StageReport
from assemblage_assets.duplicates import groups
from assemblage_assets.duplicates.config import DuplicateSettings
from assemblage_assets.images import catalog

PAGE = 200  # images per transaction (each holds the grouping lock while it runs)


def group_shard(
    conn: psycopg.Connection,
    shard: str,
    *,
    config: DuplicateSettings,
    model: str | None,
    progress: Progress | None = None,
) -> StageReport:
    """Check every not yet checked derived image of the shard. Counts: ``checked``, ``grouped``
    (joined a group), ``new_groups``, ``merged_groups``, ``clip_rejected`` (hash candidates CLIP
    turned down), ``skipped`` (marked ``duplicate``), ``released`` (back to ``processed`` because
    skip mode is off), ``clip_confirmed`` / ``clip_detached`` (members grouped on their hashes whose
    vectors have arrived since: kept, or taken out of the group)."""
    report = StageReport()
    started = time.perf_counter()
    for name in ("checked", "grouped", "new_groups", "merged_groups", "clip_rejected", "skipped", "released"):
        report.counts[name] = 0
    if not config.skip:
        report.counts["released"] = catalog.release_near_duplicates(conn, shard)
    else:  # content held back under another path stays held back here too
        report.counts["skipped"] += catalog.mark_near_duplicates(conn, groups.held_back_elsewhere(conn, shard))
    while True:
        with conn.transaction():
            groups.lock(conn)  # before reading: another run may have checked some of these meanwhile
            page = groups.unchecked_images(conn, shard, PAGE)
            for row in page:
                _check_one(conn, row, config, model, report)
        if progress and page:
            progress(f"shard {shard}: {report.counts['checked']:,} images checked, {report.counts['grouped']:,} near-duplicates")
        if len(page) < PAGE:
            break
    with conn.transaction():
        groups.lock(conn)
        confirmed, detached = groups.reconfirm(conn, shard, model, config.clip_distance)
    report.counts.update(clip_confirmed=confirmed, clip_detached=detached)
    report.seconds = time.perf_counter() - started
    return report


def _check_one(
    conn: psycopg.Connection, row: dict, config: DuplicateSettings, model: str | None, report: StageReport
) -> None:
    image_id = row["image_id"]
    found = groups.candidates(conn, row["phash"], row["dhash"], config.phash_distance, config.dhash_distance)
    clip = groups.clip_distances(conn, image_id, [c.image_id for c in found], model)
    confirmed = [c for c in found if clip.get(c.image_id, 0.0) <= config.clip_distance]
    report.counts["clip_rejected"] += len(found) - len(confirmed)
    if not groups.index_image(conn, row):
        return
    report.counts["checked"] += 1
    if not confirmed:
        return
    group_id, merged = groups.join(conn, image_id, confirmed, model)
    report.counts["grouped"] += 1
    report.counts["new_groups"] += all(c.group_id is None for c in confirmed)
    report.counts["merged_groups"] += merged
    if config.skip and groups.kept_members(conn, group_id, image_id):
        closest = min(confirmed, key=lambda c: c.hash_distance)
        message = (f"near-duplicate of image {closest.image_id} (pHash distance {closest.hash_distance}, "
                   f"group {group_id}); not published (SKIP_NEAR_DUPLICATES=1)")
        report.counts["skipped"] += catalog.mark_near_duplicates(conn, [(image_id, message)]) and 1
