"""The banded hash lookup finds exactly what a full scan finds, through the band indexes."""

from __future__ import annotations

import random
import uuid

from assemblage_assets.core import db
from assemblage_assets.core.perceptual import hamming, to_signed, to_unsigned
from assemblage_assets.duplicates import groups
from assemblage_assets.duplicates.bands import band_values, neighbourhoods


def test_bands_match_the_index_expressions_on_signed_values() -> None:
    h = to_signed(0xF00F_1234_ABCD_8001)
    assert h < 0 and band_values(h) == [0xF00F, 0x1234, 0xABCD, 0x8001]
    assert to_unsigned(h) == 0xF00F_1234_ABCD_8001
    assert len(neighbourhoods(h, 12)[0]) == 1 + 16 + 120 + 560  # within 3 bits of a 16-bit band


def _near(rng: random.Random, h: int, bits: int) -> int:
    for i in rng.sample(range(64), bits):
        h ^= 1 << i
    return h


def test_lookup_equals_a_full_scan_and_uses_the_band_indexes(pg_dsn: str) -> None:
    rng = random.Random(5)
    hashes = [rng.getrandbits(64) for _ in range(1500)]
    queries = [_near(rng, hashes[i], d) for i, d in zip(range(0, 300, 10), range(30), strict=True)]
    hashes += [_near(rng, q, rng.randrange(0, 13)) for q in queries]  # planted neighbours at 0..12 bits
    rows = [(str(uuid.UUID(int=i + 1)), to_signed(h)) for i, h in enumerate(hashes)]
    with db.connect(pg_dsn) as conn:
        conn.cursor().executemany(
            """INSERT INTO images (id, content_hash, bytes, width, height, format, original_ext, original_key)
               VALUES (%s, %s, 1, 10, 10, 'JPEG', 'jpg', 'k')""",
            [(i, i) for i, _ in rows],
        )
        conn.cursor().executemany(
            "INSERT INTO duplicate_index (image_id, phash, pixels, seen_at) VALUES (%s, %s, 100, now())", rows
        )
        conn.execute("ANALYZE duplicate_index")
        for q in queries:
            found = {c.image_id for c in groups.candidates(conn, to_signed(q), None, 12, 64)}
            expected = {i for i, h in rows if hamming(h, q) <= 12}
            assert found == expected and expected
        conn.execute("SET enable_seqscan = off")  # tiny table: ask whether the indexes can serve it at all
        probes = neighbourhoods(to_signed(queries[0]), 12)
        plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(
            "EXPLAIN SELECT image_id FROM duplicate_index WHERE ((phash >> 48) & 65535) = ANY(%s::bigint[]) "
            "OR ((phash >> 32) & 65535) = ANY(%s::bigint[]) OR ((phash >> 16) & 65535) = ANY(%s::bigint[]) "
            "OR (phash & 65535) = ANY(%s::bigint[])", probes))
    assert plan.count("Bitmap Index Scan on duplicate_index_band") == 4, plan
