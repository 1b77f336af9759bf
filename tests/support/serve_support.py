"""A small real catalogue for the search service tests, and the app running under uvicorn on
127.0.0.1.

The catalogue is ingested from generated JPEGs (EXIF make, model and capture time written into
the files) through scan, derive, publish (local object store) and the tiny CLIP; captions and
tags go through their owners (``catalog.record_captions``, ``embeddings.tags.write_tags``).
Places, ThumbHashes and duplicate groups are filled by other stages under construction (issue
12); until they write them, ``enrich`` sets those columns directly, standing in for them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from assemblage_assets.core import db
from assemblage_assets.core.imaging import DerivativeSpec
from assemblage_assets.embeddings.embed import embed_shard
from assemblage_assets.embeddings.tags import write_tags
from assemblage_assets.images import catalog
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.publish import publish_shard
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import discover_shards
from assemblage_assets.serve.config import ServeConfig
from resources.embedding import LocalClipEmbedding
from resources.object_store import LocalObjectStore
from support.embed_support import COLOURS, photo, stable_seed

# file -> (colour, size, EXIF make, model, DateTimeOriginal)
FILES: dict[str, dict[str, tuple[str, tuple[int, int], str | None, str | None, str | None]]] = {
    "cars": {
        "orange-0.jpg": ("orange", (320, 240), "Canon", "Canon EOS 40D", "2019:06:01 10:00:00"),
        "orange-1.jpg": ("orange", (320, 240), "Canon", "Canon EOS 5D", "2019:07:15 12:00:00"),
        "blue-2.jpg": ("blue", (240, 320), "NIKON CORPORATION", "NIKON D750", "2021:03:02 09:30:00"),
        "orange-3.jpg": ("orange", (320, 240), None, None, None),
    },
    "parks": {
        "green-0.jpg": ("green", (320, 240), "FUJIFILM", "X-T3", "2022:05:05 15:00:00"),
        "white-1.jpg": ("white", (300, 300), None, None, "2022:05:06 16:00:00"),
    },
}
TAG_MODEL = "tiny-clip"


def _exif(make: str | None, model: str | None, taken: str | None) -> Image.Exif:
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    return exif


def write_files(root: Path) -> Path:
    for folder, files in FILES.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, (name, (colour, size, make, model, taken)) in enumerate(files.items()):
            photo(COLOURS[colour], size=size, seed=stable_seed(folder, i)).save(
                root / folder / name, quality=90, exif=_exif(make, model, taken))
    return root


@dataclass
class Catalogue:
    dsn: str
    images: Path
    cache: Path
    objects: Path
    tiny: Path
    ids: dict[str, str]  # file name -> image id

    def config(self, **overrides: Any) -> ServeConfig:
        base = ServeConfig(store=LocalObjectStore(root=str(self.objects)), derivative_cache_dir=str(self.cache),
                           rate_limit_per_minute=0)
        return ServeConfig(**{**base.__dict__, **overrides})

    def provider(self) -> LocalClipEmbedding:
        return LocalClipEmbedding(clip_model=str(self.tiny))


def build(dsn: str, tmp: Path, tiny: Path, *, public_base_url: str = "") -> Catalogue:
    images, cache, objects = write_files(tmp / "images"), tmp / "cache", tmp / "objects"
    store = LocalObjectStore(root=str(objects), public_base_url=public_base_url)
    provider = LocalClipEmbedding(clip_model=str(tiny), batch_size=4)
    with db.connect(dsn) as conn:
        for shard in sorted(discover_shards(images), key=lambda s: s.key):
            scan_shard(conn, shard, max_pixels=120_000_000)
            derive_shard(conn, shard.key, cache_dir=cache, spec=DerivativeSpec(), workers=1)
            publish_shard(conn, shard.key, store=store, cache_dir=cache)
            embed_shard(conn, shard.key, provider, dsn=dsn, cache_dir=cache, run_id="serve-tests")
        rows = conn.execute("SELECT local_path, image_id::text AS id FROM processing_log").fetchall()
    ids = {Path(r["local_path"]).name: r["id"] for r in rows}
    return Catalogue(dsn, images, cache, objects, tiny, ids)


def enrich(cat: Catalogue) -> None:
    """Captions and tags through their owners; places, ThumbHashes and one duplicate group as
    the enrichment stages will write them (see the module docstring)."""
    from assemblage_assets.core.thumbhash import image_thumbhash

    ids = cat.ids
    with db.connect(cat.dsn) as conn:
        catalog.record_captions(conn, [
            ("a red bicycle leaning on a wall", "test-captions", ids["green-0.jpg"]),
            ("bicycle race in the rain", "test-captions", ids["white-1.jpg"]),
            ("an orange car on cobblestones", "test-captions", ids["orange-0.jpg"]),
        ])
        # replaces the zero-shot tags of the tiny (meaningless) model with known ones
        write_tags(conn, TAG_MODEL, {
            ids["green-0.jpg"]: [("bicycle", 0.9), ("street", 0.4)],
            ids["orange-0.jpg"]: [("car", 0.95), ("orange", 0.8)],
            ids["orange-1.jpg"]: [("car", 0.7)],
            ids["blue-2.jpg"]: [("car", 0.6), ("blue", 0.9)],
            ids["orange-3.jpg"]: [], ids["white-1.jpg"]: [],
        })
        for name, (city, region, country) in {"orange-0.jpg": ("Berlin", "Berlin", "DE"),
                                              "green-0.jpg": ("Paris", "Ile-de-France", "FR")}.items():
            conn.execute("UPDATE images SET place_city = %s, place_region = %s, place_country = %s WHERE id = %s",
                         (city, region, country, ids[name]))
        for image_id in ids.values():
            thumb = cat.cache / "thumbnail" / f"{image_id}.webp"
            with Image.open(thumb) as img:
                conn.execute("UPDATE images SET thumbhash = coalesce(thumbhash, %s) WHERE id = %s",
                             (image_thumbhash(img), image_id))
        group = conn.execute("INSERT INTO duplicate_groups (representative_id) VALUES (%s) RETURNING id",
                             (ids["orange-0.jpg"],)).fetchone()["id"]
        for name, distance in (("orange-0.jpg", 0), ("orange-1.jpg", 6)):
            conn.execute("INSERT INTO duplicate_members (image_id, group_id, hash_distance) VALUES (%s, %s, %s)",
                         (ids[name], group, distance))


def unit(v: Any) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free 127.0.0.1 port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
