"""The catalogue is the only writer of ``images`` and ``processing_log``: its transitions, each
guarded by the status it leaves, against the real embedded Postgres."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import psycopg

from assemblage_assets.constants import ImageStatus
from assemblage_assets.core import db
from assemblage_assets.dev.sample_data import make_photo
from assemblage_assets.embeddings import vectors
from assemblage_assets.images import catalog
from assemblage_assets.images.derive import DerivedImage
from assemblage_assets.images.probe import probe_file
from assemblage_assets.images.scan import ScanEntry


def _statuses(conn: psycopg.Connection) -> dict[str, str]:
    return {r["local_path"]: r["status"] for r in conn.execute("SELECT local_path, status FROM processing_log")}


def test_status_enum_is_the_schema_check(pg_dsn: str) -> None:
    with db.connect(pg_dsn) as conn:
        definition = conn.execute(
            """SELECT pg_get_constraintdef(c.oid) AS d FROM pg_constraint c
               WHERE c.conrelid = 'processing_log'::regclass AND c.contype = 'c'
                 AND pg_get_constraintdef(c.oid) LIKE '%%status%%'"""
        ).fetchone()["d"]
    in_schema = set(re.findall(r"'(\w+)'", definition))
    assert in_schema == {s.value for s in ImageStatus}


def test_a_path_walks_every_transition_and_guards_hold(pg_dsn: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    make_photo(64, 48, seed=1).save(a, "JPEG")
    make_photo(64, 48, seed=2).save(b, "JPEG")
    entries = [ScanEntry(str(p), size=p.stat().st_size, mtime_ns=p.stat().st_mtime_ns) for p in (a, b)]
    probes = [probe_file(e.path, e.size or 0, 10**8) for e in entries]
    ids = [str(p.image_id) for p in probes]
    with db.connect(pg_dsn) as conn:
        catalog.record_scanned(conn, "s", zip(entries, probes, strict=True))
        catalog.record_scanned(conn, "s", zip(entries, probes, strict=True))  # a rescan: still one row per path
        assert conn.execute("SELECT count(*) AS n FROM processing_log").fetchone()["n"] == 2
        assert set(_statuses(conn).values()) == {"pending"}

        catalog.record_derived(conn, [DerivedImage(ids[0], thumbnail_size=(4, 3), preview_size=(8, 6)),
                                      DerivedImage(ids[1], "corrupt", "cannot decode")])
        assert _statuses(conn) == {str(a): "processed", str(b): "failed"}

        catalog.mark_indexed(conn, "s", "m")  # not published yet: stays processed
        assert _statuses(conn)[str(a)] == "processed"
        catalog.record_published(conn, [(ids[0], ("o", "t", "p"))])
        assert _statuses(conn)[str(a)] == "uploaded"
        assert conn.execute("SELECT preview_url FROM images WHERE id = %s", (ids[0],)).fetchone()["preview_url"] == "p"

        vectors.ensure_model(conn, "m", "test", 4)
        vectors.write_vectors(conn, "m", "test", [ids[0]], np.eye(4, dtype=np.float32)[:1])
        assert catalog.mark_indexed(conn, "s", "m") == 1
        assert _statuses(conn)[str(a)] == "indexed"

        catalog.note_errors(conn, "embedding", [(ids[0], "gave up"), (ids[1], "never shown")])
        rows = {r["local_path"]: r for r in conn.execute("SELECT local_path, status, error_kind, error_message FROM processing_log")}
        assert (rows[str(a)]["status"], rows[str(a)]["error_kind"]) == ("indexed", "embedding")
        assert rows[str(b)]["error_message"] == "cannot decode"  # a failed path keeps its own reason
        catalog.clear_errors(conn, "embedding", [ids[0]])
        assert conn.execute("SELECT error_kind FROM processing_log WHERE local_path = %s", (str(a),)).fetchone()["error_kind"] is None

        catalog.requeue_for_derivation(conn, [ids[0]])  # indexed is not a status requeue leaves
        assert _statuses(conn)[str(a)] == "indexed"
        catalog.record_publish_failed(conn, [(ids[1], "store-error", "x")])  # failed stays failed, no double count
        attempts = conn.execute("SELECT attempts FROM processing_log WHERE local_path = %s", (str(b),)).fetchone()["attempts"]
        assert attempts == 3  # two scans and one failed derivation
