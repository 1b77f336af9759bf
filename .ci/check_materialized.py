"""CI: after `dagster asset materialize` of every asset, check the rows and objects, not only
the exit codes. Usage: check_materialized.py SHARD_KEY SHARD_DIR"""

from __future__ import annotations

import sys
from pathlib import Path

from assemblage_assets.cli.status import collect_status
from assemblage_assets.core import settings

shard, shard_dir = sys.argv[1], Path(sys.argv[2])
photos = sum(1 for p in shard_dir.rglob("*") if p.is_file())
status = collect_status(shard)
problems = []
if status["status_counts"]["indexed"] != photos or sum(status["status_counts"].values()) != photos:
    problems.append(f"{shard}: expected {photos} paths 'indexed', got {status['status_counts']}")
models = status["embeddings"]["models"]
if len(models) != 1 or models[0]["vectors"] != photos:
    problems.append(f"expected one model with {photos} vectors, got {models}")
if status["embeddings"]["missing"] != 0:
    problems.append(f"{status['embeddings']['missing']} image(s) still miss a vector")
objects = Path(settings.env_str("OBJECT_STORE_DIR", str(settings.Paths.from_env().object_store)))
for prefix in ("original", "thumbnail", "watermarked"):
    found = sum(1 for p in (objects / prefix).rglob("*") if p.is_file())
    if found != photos:
        problems.append(f"object store {objects / prefix}: {found} objects, expected {photos}")
vehicles = status["vehicles"]
if vehicles["backfilled"] != 1 or vehicles["vehicle_images"] != 1:
    problems.append(f"vehicle backfill: expected 1 vehicle with 1 image, got {vehicles}")
if status["disagreements"]["total"]:
    problems.append(f"status disagrees with the catalogue: {status['disagreements']}")
if problems:
    sys.exit("materialized rows are wrong:\n  " + "\n  ".join(problems))
print(f"ok: {photos} images of {shard} indexed with {photos * 3} objects; 1 vehicle backfilled with 1 image")
