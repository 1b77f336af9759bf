"""The layout rules import-linter cannot see: one module writes each table, and the Dagster and
CLI modules hold no SQL (they call the owners' functions)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("assemblage_assets", "resources", "schedules")
OWNERS = {
    "images": "assemblage_assets/images/catalog.py",
    "processing_log": "assemblage_assets/images/catalog.py",
    "shard_verifications": "assemblage_assets/images/verification.py",
    "shard_scans": "assemblage_assets/images/rescan.py",
    "image_embeddings": "assemblage_assets/embeddings/vectors.py",
    "embedding_models": "assemblage_assets/embeddings/vectors.py",
    "embedding_queue": "assemblage_assets/embeddings/retry_queue.py",
    "embedding_usage_log": "assemblage_assets/embeddings/usage_log.py",
    "paid_call_intents": "assemblage_assets/embeddings/intents.py",
    "prompt_vectors": "assemblage_assets/embeddings/prompt_vectors.py",
    "embedding_rate_limit": "assemblage_assets/embeddings/rate_limit.py",
    "embedding_provider_pause": "assemblage_assets/embeddings/rate_limit.py",
    "image_tags": "assemblage_assets/embeddings/tags.py",
    "caption_failures": "assemblage_assets/embeddings/caption_queue.py",
    "vehicles": "assemblage_assets/vehicles/records.py",
    "vehicle_images": "assemblage_assets/vehicles/records.py",
    "duplicate_index": "assemblage_assets/duplicates/groups.py",
    "duplicate_groups": "assemblage_assets/duplicates/groups.py",
    "duplicate_members": "assemblage_assets/duplicates/groups.py",
    "schema_migrations": "assemblage_assets/core/db.py",
}
WRITE = re.compile(r"\b(?:INSERT INTO|UPDATE|DELETE FROM|COPY)\s+(\w+)", re.IGNORECASE)
SQL = re.compile(r"\b(?:SELECT|INSERT INTO|UPDATE|DELETE FROM)\b.*\b(?:FROM|SET|VALUES|WHERE)\b|\.execute\(", re.DOTALL)


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_each_table_is_written_by_its_owner_only() -> None:
    writers: dict[str, set[str]] = {}
    for path in _sources():
        for table in WRITE.findall(path.read_text()):
            if table in OWNERS:
                writers.setdefault(table, set()).add(path.relative_to(REPO).as_posix())
    assert writers == {table: {owner} for table, owner in OWNERS.items() if table in writers}
    # every table of the schema has its owner here, and each owner really writes it
    assert set(writers) == set(OWNERS) - {"schema_migrations"} | ({"schema_migrations"} & set(writers))


def test_no_sql_in_assets_sensors_jobs_schedules_or_the_cli() -> None:
    thin = [
        p for p in _sources()
        if p.name in ("assets.py", "sensors.py", "jobs.py", "definitions.py")
        or p.parent.name in ("schedules", "cli")
    ]
    assert thin, "the layout moved: update this test"
    offenders = [p.relative_to(REPO).as_posix() for p in thin if SQL.search(p.read_text())]
    assert offenders == []
