"""Media of a private bucket: published thumbnails and previews are answered with a 307 to a
presigned URL of their object (moto's standalone server on 127.0.0.1 behind the counting proxy),
followed over real HTTP; unpublished ones still come from the derivative cache.

moto does not check the signature or the expiry of a presigned URL (a tampered or expired one is
served; with its IAM authentication on it fails every query-signed request with a 500), so no
test here claims that a bad URL is refused.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support.embed_support import COLOURS, photo, stable_seed
from support.s3_loopback import ACCESS_KEY, REGION, SECRET_KEY, S3Env

from assemblage_assets.core import db, settings
from assemblage_assets.core.imaging import DerivativeSpec
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.publish import publish_shard
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import discover_shards
from assemblage_assets.serve.app import create_app
from assemblage_assets.serve.config import ServeConfig
from assemblage_assets.serve.media import MediaLocator, Redirect
from assemblage_assets.serve.security import ConfigError
from assemblage_assets.serve.service import SearchService
from resources import object_store
from resources.object_store import StoreConfigError

PREFIX = "pfx"
PRESIGN = 600


@dataclass
class Published:
    dsn: str
    bucket: str
    cache: Path
    published: list[str]  # image ids in the bucket, their cache entries deleted
    pending: str  # image id derived but never published


@pytest.fixture
def s3() -> S3Env:
    return S3Env.shared()


@pytest.fixture
def published(s3: S3Env, assemblage_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Published:
    """Two images published to the bucket through ``object_store.from_env`` (no IMAGE_BASE_URL),
    their derivative cache deleted; one more derived but left unpublished."""
    bucket = s3.new_bucket("media")
    for name, value in {"R2_BUCKET": bucket, "S3_ENDPOINT_URL": s3.url, "S3_REGION": REGION, "R2_PREFIX": PREFIX,
                        "R2_ACCESS_KEY_ID": ACCESS_KEY, "R2_SECRET_ACCESS_KEY": SECRET_KEY,
                        "SERVE_PRESIGN_SECONDS": str(PRESIGN)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("IMAGE_BASE_URL", raising=False)
    images = tmp_path / "images"
    for folder, colours in {"done": ("orange", "blue"), "later": ("green",)}.items():
        (images / folder).mkdir(parents=True)
        for i, colour in enumerate(colours):
            photo(COLOURS[colour], size=(360, 240), seed=stable_seed(folder, i)).save(images / folder / f"{colour}.jpg")
    cache = settings.Paths.from_env().derivative_cache
    dsn = assemblage_env["DATABASE_URL"]
    with db.connect(dsn) as conn:
        for shard in discover_shards(images):
            scan_shard(conn, shard, max_pixels=120_000_000)
            derive_shard(conn, shard.key, cache_dir=cache, spec=DerivativeSpec(), workers=1)
        report = publish_shard(conn, "done", store=object_store.from_env(), cache_dir=cache)
        assert report.counts["images_published"] == 2, report.counts
        rows = conn.execute("""SELECT i.id::text AS id, p.shard, i.thumbnail_url FROM images i
                               JOIN processing_log p ON p.image_id = i.id ORDER BY p.local_path""").fetchall()
    done = [r["id"] for r in rows if r["shard"] == "done"]
    assert all(r["thumbnail_url"].startswith("s3://") for r in rows if r["shard"] == "done")  # no public URL
    for image_id in done:
        (cache / "thumbnail" / f"{image_id}.webp").unlink()
        (cache / "watermarked" / f"{image_id}.jpg").unlink()
    pending = next(r["id"] for r in rows if r["shard"] == "later")
    return Published(dsn, bucket, cache, done, pending)


def _client(pub: Published, config: ServeConfig | None = None) -> tuple[TestClient, SearchService]:
    service = SearchService(pub.dsn, None)
    config = config or replace(ServeConfig.from_env(), rate_limit_per_minute=0)
    return TestClient(create_app(service, config), raise_server_exceptions=False, follow_redirects=False), service


def test_published_media_redirect_to_presigned_urls_of_the_bucket(published: Published, s3: S3Env) -> None:
    client, service = _client(published)
    try:
        image = published.published[0]
        cards = client.get("/api/images", params={"limit": 10}).json()["items"]
        card = next(i for i in cards if i["image_id"] == image)
        assert card["thumbnail"] == f"/media/{image}/thumbnail"  # the page asks the app, not the bucket
        before = len(s3.proxy.seen)
        redirect = client.get(card["thumbnail"])
        assert redirect.status_code == 307, redirect.text
        assert len(s3.proxy.seen) == before  # signed here: no request to the bucket
        location = redirect.headers["location"]
        url = urlsplit(location)
        query = parse_qs(url.query)
        assert f"{url.scheme}://{url.netloc}" == s3.url
        assert url.path == f"/{published.bucket}/{PREFIX}/thumbnail/{image}.webp"  # the key publishing wrote
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == [str(PRESIGN)]
        assert redirect.headers["cache-control"] == f"private, max-age={PRESIGN // 2}"
        assert "immutable" not in redirect.headers["cache-control"]

        got = httpx.get(location, timeout=30)  # real HTTP, to the bucket
        assert got.status_code == 200
        assert got.headers["content-type"] == "image/webp"
        assert got.headers["cache-control"] == f"private, max-age={PRESIGN}"
        stored = s3.direct().get_object(Bucket=published.bucket, Key=f"{PREFIX}/thumbnail/{image}.webp")["Body"].read()
        assert got.content == stored
        with db.connect(published.dsn) as conn:
            size = conn.execute("SELECT thumbnail_width, thumbnail_height FROM images WHERE id = %s",
                                (image,)).fetchone()
        with Image.open(io.BytesIO(got.content)) as img:
            assert img.format == "WEBP" and img.size == (size["thumbnail_width"], size["thumbnail_height"])
            assert img.size == (DerivativeSpec().thumbnail_box, 200)  # 360x240 into the 300 box

        # the same URL again within half its life: the browser's cache can answer
        assert client.get(card["thumbnail"]).headers["location"] == location

        preview = client.get(f"/media/{published.published[1]}/preview")
        assert preview.status_code == 307
        assert urlsplit(preview.headers["location"]).path == \
            f"/{published.bucket}/{PREFIX}/watermarked/{published.published[1]}.jpg"
        jpeg = httpx.get(preview.headers["location"], timeout=30)
        assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(jpeg.content)) as img:
            assert img.format == "JPEG"
    finally:
        service.close()


def test_unpublished_media_come_from_the_cache_and_unknown_ids_are_404(published: Published, s3: S3Env) -> None:
    client, service = _client(published)
    try:
        before = len(s3.proxy.seen)
        thumb = client.get(f"/media/{published.pending}/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
        assert thumb.content == (published.cache / "thumbnail" / f"{published.pending}.webp").read_bytes()
        assert thumb.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert len(s3.proxy.seen) == before
        assert client.get("/media/00000000-0000-0000-0000-000000000000/thumbnail").status_code == 404
        assert client.get("/media/not-an-id/thumbnail").status_code == 400
    finally:
        service.close()


def test_a_store_that_cannot_sign_falls_back_to_the_cache_or_says_503(published: Published, s3: S3Env) -> None:
    broken = s3.store(published.bucket, prefix=PREFIX, aws_secret_access_key=None)  # incomplete credentials
    kept, lost = published.published
    (published.cache / "thumbnail").mkdir(exist_ok=True)
    data = s3.direct().get_object(Bucket=published.bucket, Key=f"{PREFIX}/thumbnail/{kept}.webp")["Body"].read()
    (published.cache / "thumbnail" / f"{kept}.webp").write_bytes(data)
    config = ServeConfig(store=broken, derivative_cache_dir=str(published.cache), rate_limit_per_minute=0)
    client, service = _client(published, config)
    try:
        served = client.get(f"/media/{kept}/thumbnail")
        assert served.status_code == 200 and served.content == data
        missing = client.get(f"/media/{lost}/thumbnail")
        assert missing.status_code == 503 and "R2_SECRET_ACCESS_KEY" in missing.json()["detail"]
    finally:
        service.close()


def test_signed_urls_are_reused_for_half_their_life(published: Published, s3: S3Env) -> None:
    now = [1_000.0]
    config = ServeConfig(store=s3.store(published.bucket, prefix=PREFIX), presign_seconds=PRESIGN)
    locator = MediaLocator(config, clock=lambda: now[0])
    row = {"thumbnail_url": f"s3://{published.bucket}/x", "thumbnail_key": f"thumbnail/{published.published[0]}.webp",
           "published": True}
    first = locator.locate(row, "thumbnail")
    assert isinstance(first, Redirect) and first.cache_control == "private, max-age=300"
    now[0] += 200
    again = locator.locate(row, "thumbnail")
    assert again.url == first.url and again.cache_control == "private, max-age=100"  # never past half its life
    now[0] += 100
    assert locator.locate(row, "thumbnail").cache_control == "private, max-age=300"  # signed again


def test_presign_lifetime_is_bounded(monkeypatch: pytest.MonkeyPatch, s3: S3Env) -> None:
    with pytest.raises(StoreConfigError, match="1 to 604800"):
        s3.store("any").presigned_get_url("public", "k", 604801)
    monkeypatch.setenv("SERVE_PRESIGN_SECONDS", "0")
    with pytest.raises(ConfigError, match="SERVE_PRESIGN_SECONDS"):
        ServeConfig.from_env()


def test_a_local_store_has_no_presigned_urls(tmp_path: Path) -> None:
    store = object_store.LocalObjectStore(root=str(tmp_path))
    (tmp_path / "thumbnail").mkdir()
    (tmp_path / "thumbnail" / "a.webp").write_bytes(b"RIFF")
    assert store.presigned_get_url("public", "thumbnail/a.webp", 60) is None
    assert store.local_file("public", "thumbnail/a.webp") == (tmp_path / "thumbnail" / "a.webp").resolve()
    assert store.local_file("public", "../outside.webp") is None
    shutil.rmtree(tmp_path / "thumbnail")
    assert store.local_file("public", "thumbnail/a.webp") is None
