"""The search API against the real embedded Postgres and the tiny CLIP: fusion order, filters,
pagination, media, auth on and off, bounded inputs (4xx, never 5xx)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support.embed_support import FakeOpenAI, ingest, write_tree
from support.paid_text import fill_window, usage_rows, window_calls
from support.serve_support import Catalogue, unit

from assemblage_assets.core import db
from assemblage_assets.embeddings import search
from assemblage_assets.embeddings.embed import embed_shard
from assemblage_assets.serve import security
from assemblage_assets.serve.app import create_app
from assemblage_assets.serve.service import SearchService, fuse, query_tags
from resources.embedding import OpenAIEmbedding

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def service(catalogue: Catalogue) -> Iterator[SearchService]:
    svc = SearchService(catalogue.dsn, catalogue.provider())
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service: SearchService, catalogue: Catalogue) -> TestClient:
    return TestClient(create_app(service, catalogue.config()), raise_server_exceptions=False)


def ids_of(response) -> list[str]:  # noqa: ANN001
    assert response.status_code == 200, response.text
    return [item["image_id"] for item in response.json()["items"]]


def test_reciprocal_rank_fusion_by_hand() -> None:
    fused = fuse({"vector": ["a", "b", "c"], "caption": ["c"], "tags": ["c", "a"]})
    assert [i for i, _, _ in fused] == ["c", "a", "b"]
    assert fused[0][1] == pytest.approx(1 / 63 + 1 / 61 + 1 / 61)
    assert fused[0][2] == {"vector": 3, "caption": 1, "tags": 1}
    # runs of up to 3 words, normalized like stored tags ("photo" and "and" are stop words)
    assert query_tags("Black and White photo") == ["black white", "white", "black"]


def test_text_search_fuses_caption_and_tag_hits_with_the_vector(client: TestClient, catalogue: Catalogue) -> None:
    ids = catalogue.ids
    response = client.get("/api/search", params={"q": "bicycle", "limit": 6})
    got = ids_of(response)
    body = response.json()
    assert body["model"] == "tiny-clip" and len(got) == 6
    # caption and tag both name green-0: first whatever its vector says; white-1's caption puts it second
    assert got[:2] == [ids["green-0.jpg"], ids["white-1.jpg"]]
    first, second = body["items"][:2]
    assert first["ranks"]["caption"] in (1, 2) and first["ranks"]["tags"] == 1 and "vector" in first["ranks"]
    assert "tags" not in second["ranks"] and "caption" in second["ranks"]
    # the rest come in the order of the text vector alone
    provider = catalogue.provider()
    vector = provider.embed_texts(["bicycle"])[0][0]
    with db.connect(catalogue.dsn) as conn:
        model = search.pick_model(conn, None, None)
        order = [h["image_id"] for h in search.nearest(conn, model, vector, k=6, details=False)]
    assert got[2:] == [i for i in order if i not in got[:2]]
    assert all(item["distance"] is not None for item in body["items"])
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_results_carry_thumbnails_served_from_the_local_store(client: TestClient, catalogue: Catalogue) -> None:
    item = client.get("/api/search", params={"q": "orange car"}).json()["items"][0]
    assert item["thumbnail"] == f"/media/{item['image_id']}/thumbnail" and item["thumbhash"]
    media = client.get(item["thumbnail"])
    assert media.status_code == 200 and media.headers["content-type"] == "image/webp"
    stored = (catalogue.objects / "thumbnail" / f"{item['image_id']}.webp").read_bytes()
    assert media.content == stored
    with Image.open(io.BytesIO(media.content)) as img:
        assert img.width > 0
    preview = client.get(f"/media/{item['image_id']}/preview")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    assert client.get(f"/media/{item['image_id']}/original").status_code == 422  # originals are never served
    assert client.get(f"/media/{item['image_id']}/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert client.get("/media/00000000-0000-0000-0000-000000000000/thumbnail").status_code == 404


@pytest.mark.parametrize(("params", "expected"), [
    ({"shard": "parks"}, {"green-0.jpg", "white-1.jpg"}),
    ({"shard": ["parks", "cars"]}, None),
    ({"source": "parks"}, {"green-0.jpg", "white-1.jpg"}),  # a folder source under the test tree
    ({"source": "par"}, set()),  # a prefix ends at a separator
    ({"source": ""}, None),
    ({"camera_make": "canon"}, {"orange-0.jpg", "orange-1.jpg"}),
    ({"camera_model": "D750"}, {"blue-2.jpg"}),
    ({"captured_from": "2019-07-01", "captured_to": "2021-12-31"}, {"orange-1.jpg", "blue-2.jpg"}),
    ({"captured_to": "2019-06-01"}, {"orange-0.jpg"}),
    ({"country": "de"}, {"orange-0.jpg"}),
    ({"place": "paris"}, {"green-0.jpg"}),
    ({"tag": "car"}, {"orange-0.jpg", "orange-1.jpg", "blue-2.jpg"}),
    ({"tag": ["car", "Orange"]}, {"orange-0.jpg"}),
    ({"orientation": "portrait"}, {"blue-2.jpg"}),
    ({"orientation": "square"}, {"white-1.jpg"}),
    ({"has_duplicates": "true"}, {"orange-0.jpg", "orange-1.jpg"}),
    ({"colour": "#ff8c00", "colour_distance": 40}, {"orange-0.jpg", "orange-1.jpg", "orange-3.jpg"}),
    ({"colour": "1e3ce6", "colour_distance": 40, "shard": "cars"}, {"blue-2.jpg"}),
])
def test_filters_restrict_every_kind_of_query(client: TestClient, catalogue: Catalogue, params: dict,
                                              expected: set[str] | None) -> None:
    names = {v: k for k, v in catalogue.ids.items()}
    expected = set(catalogue.ids) if expected is None else expected
    params = {k: (str(catalogue.images / v) if k == "source" else v) for k, v in params.items()}
    anchor = catalogue.ids["white-1.jpg"]
    for path, extra in (("/api/images", {}), ("/api/search", {"q": "a photo"}),
                        (f"/api/images/{anchor}/similar", {})):
        got = {names[i] for i in ids_of(client.get(path, params={**params, **extra, "limit": 50}))}
        want = expected - {"white-1.jpg"} if "similar" in path else expected
        assert got == want, (path, params)
    if params.get("has_duplicates"):
        others = {names[i] for i in ids_of(client.get("/api/images", params={"has_duplicates": "false"}))}
        assert others == set(catalogue.ids) - expected


def test_cursor_pagination_walks_every_result_once(client: TestClient, catalogue: Catalogue) -> None:
    anchor = catalogue.ids["orange-0.jpg"]
    for path, params in (("/api/images", {}), ("/api/search", {"q": "car"}), (f"/api/images/{anchor}/similar", {})):
        seen, cursor, pages = [], None, 0
        while True:
            body = client.get(path, params={**params, "limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            seen += [i["image_id"] for i in body["items"]]
            pages += 1
            cursor = body["next_cursor"]
            if not cursor:
                break
        full = ids_of(client.get(path, params={**params, "limit": 50}))
        assert seen == full and len(set(seen)) == len(seen) and pages == (len(full) + 1) // 2, path
    assert len(full) == len(catalogue.ids) - 1  # similar: every image but the anchor


def test_more_like_this_ranks_by_the_stored_vector(client: TestClient, catalogue: Catalogue) -> None:
    anchor = catalogue.ids["orange-0.jpg"]
    with db.connect(catalogue.dsn) as conn:
        rows = conn.execute("SELECT image_id::text AS id, embedding::text AS v FROM image_embeddings").fetchall()
    vecs = {r["id"]: unit(np.array(r["v"].strip("[]").split(","), np.float32)) for r in rows}
    expected = sorted((i for i in vecs if i != anchor), key=lambda i: (1 - float(vecs[i] @ vecs[anchor]), i))
    body = client.get(f"/api/images/{anchor}/similar", params={"limit": 10}).json()
    assert [i["image_id"] for i in body["items"]] == expected
    assert [i["distance"] for i in body["items"]] == pytest.approx([1 - float(vecs[i] @ vecs[anchor]) for i in expected], abs=1e-5)


def test_search_by_upload_is_validated_and_not_stored(client: TestClient, catalogue: Catalogue) -> None:
    source = catalogue.images / "cars" / "orange-0.jpg"
    with db.connect(catalogue.dsn) as conn:
        before = conn.execute("SELECT count(*) AS n FROM images").fetchone()["n"]
    response = client.post("/api/search/image", files={"file": ("x.jpg", source.read_bytes(), "image/jpeg")})
    got = ids_of(response)
    assert got[0] == catalogue.ids["orange-0.jpg"]  # the same pixels: distance ~0
    assert response.json()["items"][0]["distance"] == pytest.approx(0, abs=1e-4)
    with db.connect(catalogue.dsn) as conn:
        assert conn.execute("SELECT count(*) AS n FROM images").fetchone()["n"] == before
    gif = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
    assert client.post("/api/search/image", files={"file": ("x.jpg", gif, "image/jpeg")}).status_code == 415
    assert client.post("/api/search/image", files={"file": ("x.jpg", b"", "image/jpeg")}).status_code == 400
    truncated = b"\xff\xd8\xff\xe0" + b"\x00" * 40
    assert client.post("/api/search/image", files={"file": ("x.jpg", truncated, "image/jpeg")}).status_code == 400
    assert client.post("/api/search/image").status_code == 422


def test_paid_text_and_upload_searches_take_slots_of_the_shared_limit_or_get_429(
    catalogue: Catalogue, pg_dsn: str, tmp_path, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    monkeypatch.setenv("TEXT_CALL_MAX_WAIT_SECONDS", "0.5")
    monkeypatch.setenv("DEFAULT_OWNER", "team-api")
    images = write_tree(tmp_path / "images", {"cars": ["orange", "blue"]})
    ingest(pg_dsn, images, tmp_path / "cache")
    limit = 4
    with FakeOpenAI() as fake:
        options = {"api_key": "sk-api", "base_url": f"{fake.url}/v1", "dimensions": 8, "timeout_seconds": 5.0}
        with db.connect(pg_dsn) as conn:
            embed_shard(conn, "cars", OpenAIEmbedding(**options, max_calls_per_min=0), dsn=pg_dsn,
                        cache_dir=tmp_path / "cache", run_id="embed")
        fill_window(pg_dsn, "openai", limit)  # ingest runs hold every slot of this minute
        sent = len(fake.requests)
        svc = SearchService(pg_dsn, OpenAIEmbedding(**options, max_calls_per_min=limit + 1))
        try:
            client = TestClient(create_app(svc, catalogue.config()), raise_server_exceptions=False)
            # an upload costs a caption and an embedding: two slots, and one is left
            upload = {"file": ("x.jpg", (images / "cars" / "orange-0.jpg").read_bytes(), "image/jpeg")}
            response = client.post("/api/search/image", files=upload)
            assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
            assert "no call slot within 0.5s" in response.json()["detail"]
            assert len(fake.requests) == sent and window_calls(pg_dsn, "openai") == limit
            assert usage_rows(pg_dsn, "search-upload") == []

            response = client.get("/api/search", params={"q": "orange car"})  # takes the one slot left
            assert response.status_code == 200 and len(response.json()["items"]) == 2
            assert len(fake.requests) == sent + 1 and window_calls(pg_dsn, "openai") == limit + 1
            (row,) = usage_rows(pg_dsn, "text")
            assert (row["provider"], row["requests"], row["owner"]) == ("openai", 1, "team-api")
            response = client.get("/api/search", params={"q": "orange car"})  # the window is full
            assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1
            assert len(fake.requests) == sent + 1 and len(usage_rows(pg_dsn, "text")) == 1
            assert window_calls(pg_dsn, "openai") == limit + 1
        finally:
            svc.close()


def test_upload_larger_than_the_cap_is_refused(service: SearchService, catalogue: Catalogue) -> None:
    small = TestClient(create_app(service, catalogue.config(max_upload_bytes=1000)), raise_server_exceptions=False)
    data = (catalogue.images / "cars" / "orange-0.jpg").read_bytes()
    assert len(data) > 1000
    response = small.post("/api/search/image", files={"file": ("x.jpg", data, "image/jpeg")})
    assert response.status_code == 413 and "SERVE_MAX_UPLOAD_BYTES" in response.json()["detail"]


def test_detail_shards_failures_and_duplicates(client: TestClient, catalogue: Catalogue) -> None:
    ids = catalogue.ids
    d = client.get(f"/api/images/{ids['orange-1.jpg']}").json()
    assert d["exif_data"]["make"] == "Canon" and d["captured_at"].startswith("2019-07-15")
    assert d["paths"][0]["shard"] == "cars" and d["paths"][0]["status"] == "indexed" and d["models"] == ["tiny-clip"]
    assert [t["tag"] for t in d["tags"]] == ["car"] and d["palette"][0]["hex"].startswith("#")
    assert {m["image_id"] for m in d["duplicates"]["members"]} == {ids["orange-0.jpg"], ids["orange-1.jpg"]}
    assert d["duplicates"]["representative_id"] == ids["orange-0.jpg"]
    assert "original_url" not in d and d["browse_url"].endswith(f"/image/{ids['orange-1.jpg']}")
    shards = client.get("/api/shards").json()["items"]
    assert [(s["shard"], s["counts"], s["failed"]) for s in shards] == [("cars", {"indexed": 4}, 0),
                                                                       ("parks", {"indexed": 2}, 0)]
    assert shards[0]["browse_url"] == "http://127.0.0.1:8000/shard/cars"
    page1 = client.get("/api/shards", params={"limit": 1}).json()
    page2 = client.get("/api/shards", params={"limit": 1, "cursor": page1["next_cursor"]}).json()
    assert [s["shard"] for s in page1["items"] + page2["items"]] == ["cars", "parks"] and page2["next_cursor"] is None
    assert client.get("/api/shards/parks/failures").json() == {"shard": "parks", "items": [], "next_cursor": None}
    assert client.get("/api/shards/nope").status_code == 404
    groups = client.get("/api/duplicates").json()
    assert len(groups["items"]) == 1 and groups["items"][0]["members"][0]["image_id"] == ids["orange-0.jpg"]
    assert groups["items"][0]["members"][0]["thumbnail"].startswith("/media/")


def test_failures_per_shard_are_listed(service: SearchService, catalogue: Catalogue, tmp_path) -> None:  # noqa: ANN001
    broken = catalogue.images / "parks" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    try:
        from assemblage_assets.images.scan import scan_shard
        from assemblage_assets.images.shards import discover_shards

        with db.connect(catalogue.dsn) as conn:
            (parks,) = [s for s in discover_shards(catalogue.images) if s.key == "parks"]
            scan_shard(conn, parks, max_pixels=120_000_000)
        client = TestClient(create_app(service, catalogue.config()), raise_server_exceptions=False)
        body = client.get("/api/shards/parks/failures").json()
        assert [(f["path"].rsplit("/", 1)[-1], f["error_kind"]) for f in body["items"]] == [("broken.jpg", "corrupt")]
        assert client.get("/api/shards/parks").json()["failed"] == 1
    finally:
        broken.unlink()
        with db.connect(catalogue.dsn) as conn:
            conn.execute("DELETE FROM processing_log WHERE local_path = %s", (str(broken),))


@pytest.mark.parametrize(("path", "params", "status"), [
    ("/api/search", {}, 422),
    ("/api/search", {"q": ""}, 422),
    ("/api/search", {"q": "   "}, 400),
    ("/api/search", {"q": "x" * 501}, 422),
    ("/api/search", {"q": "a\x00b"}, 422),
    ("/api/search", {"q": "car", "limit": 0}, 422),
    ("/api/search", {"q": "car", "limit": 101}, 422),
    ("/api/search", {"q": "car", "ef_search": 0}, 422),
    ("/api/search", {"q": "car", "ef_search": 5000}, 422),
    ("/api/search", {"q": "car", "cursor": "!!!"}, 422),
    ("/api/search", {"q": "car", "cursor": "bm90LWpzb24"}, 400),
    ("/api/search", {"q": "car", "cursor": "eyJvIjo5OTk5OTl9"}, 400),  # {"o":999999}: beyond SERVE_MAX_DEPTH
    ("/api/search", {"q": "car", "colour": "#zzzzzz"}, 422),
    ("/api/search", {"q": "car", "country": "Germany"}, 422),
    ("/api/search", {"q": "car", "captured_from": "0001-01-01"}, 422),
    ("/api/search", {"q": "car", "captured_to": "9999-12-31"}, 422),
    ("/api/search", {"q": "car", "orientation": "diagonal"}, 422),
    ("/api/search", {"q": "car", "shard": ["s"] * 11}, 422),
    ("/api/images", {"cursor": "eyJ0Ijoibm9wZSIsImkiOiJ4In0"}, 400),  # {"t":"nope","i":"x"}
    ("/api/images/not-a-uuid", {}, 400),
    ("/api/images/00000000-0000-0000-0000-000000000000", {}, 404),
    ("/api/images/00000000-0000-0000-0000-000000000000/similar", {}, 404),
    ("/api/duplicates", {"cursor": "eyJnIjoxZTQwfQ"}, 400),  # {"g":1e40}
    ("/api/duplicates", {"cursor": "eyJnIjo5OTk5OTk5OTk5OTk5OTk5OTk5OTk5fQ"}, 400),
])
def test_bad_inputs_get_4xx_never_5xx(client: TestClient, path: str, params: dict, status: int) -> None:
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and "psycopg" not in response.text


def test_token_guards_api_media_and_page(service: SearchService, catalogue: Catalogue) -> None:
    app = create_app(service, catalogue.config(token=TOKEN))
    anon = TestClient(app, raise_server_exceptions=False)
    image = catalogue.ids["orange-0.jpg"]
    for path in ("/api/search?q=car", f"/media/{image}/thumbnail", "/openapi.json", "/api/shards"):
        response = anon.get(path)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", path
    page = anon.get("/shard/cars")
    assert page.status_code == 401 and 'name="token"' in page.text and 'value="/shard/cars"' in page.text
    assert anon.get("/api/search?q=car", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert anon.get("/api/search?q=car", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    basic = base64.b64encode(f"me:{TOKEN}".encode()).decode()
    assert anon.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert anon.get("/", headers={"Authorization": "Basic !!"}).status_code == 401
    # the login form: a wrong token stays out, the right one gets a session cookie (not the token)
    browser = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
    assert browser.post("/login", data={"token": "nope", "next": "/"}).status_code == 401
    login = browser.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.cookies[security.SESSION_COOKIE]
    assert TOKEN not in cookie and "httponly" in login.headers["set-cookie"].lower()
    assert browser.get("/api/search?q=car").status_code == 200 and browser.get("/").status_code == 200
    assert browser.get(f"/media/{image}/thumbnail").status_code == 200


def test_without_a_token_only_loopback_binds(catalogue: Catalogue, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.5"):
        security.require_token_off_loopback(host, "")
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.org"):
        with pytest.raises(security.ConfigError, match="ASSEMBLAGE_API_TOKEN"):
            security.require_token_off_loopback(host, "")
        security.require_token_off_loopback(host, TOKEN)
    from assemblage_assets.cli.main import main

    monkeypatch.delenv("ASSEMBLAGE_API_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "ASSEMBLAGE_API_TOKEN" in capsys.readouterr().err


def test_rate_limit_per_client(service: SearchService, catalogue: Catalogue) -> None:
    client = TestClient(create_app(service, catalogue.config(rate_limit_per_minute=3)), raise_server_exceptions=False)
    codes = [client.get("/api/shards").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = client.get("/api/shards")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert client.get("/static/app.js").status_code == 200  # static files are not counted


def test_cors_is_off_unless_configured(service: SearchService, catalogue: Catalogue, client: TestClient) -> None:
    headers = {"Origin": "https://other.example", "Access-Control-Request-Method": "GET"}
    assert "access-control-allow-origin" not in client.get("/api/shards", headers=headers).headers
    allowed = TestClient(create_app(service, catalogue.config(cors_origins=("https://other.example",))))
    assert allowed.get("/api/shards", headers=headers).headers["access-control-allow-origin"] == "https://other.example"


def test_ef_search_is_per_query_and_reported(client: TestClient) -> None:
    assert client.get("/api/search", params={"q": "car"}).json()["ef_search"] == search.default_ef_search()
    assert client.get("/api/search", params={"q": "car", "ef_search": 250}).json()["ef_search"] == 250


def test_public_urls_are_used_when_published_under_image_base_url(service: SearchService, catalogue: Catalogue) -> None:
    image = catalogue.ids["blue-2.jpg"]
    with db.connect(catalogue.dsn) as conn:
        before = conn.execute("SELECT thumbnail_url, preview_url FROM images WHERE id = %s", (image,)).fetchone()
        conn.execute("UPDATE images SET thumbnail_url = %s, preview_url = %s WHERE id = %s",
                     (f"https://cdn.example/thumbnail/{image}.webp", f"https://cdn.example/watermarked/{image}.jpg", image))
    try:
        client = TestClient(create_app(service, catalogue.config()), raise_server_exceptions=False, follow_redirects=False)
        card = next(i for i in client.get("/api/images", params={"limit": 50}).json()["items"] if i["image_id"] == image)
        assert card["thumbnail"] == f"https://cdn.example/thumbnail/{image}.webp"
        redirect = client.get(f"/media/{image}/thumbnail")
        assert redirect.status_code == 307 and redirect.headers["location"] == card["thumbnail"]
    finally:
        with db.connect(catalogue.dsn) as conn:
            conn.execute("UPDATE images SET thumbnail_url = %s, preview_url = %s WHERE id = %s",
                         (before["thumbnail_url"], before["preview_url"], image))


def test_assemblage_serve_command_serves_the_catalogue(catalogue: Catalogue, tmp_path) -> None:  # noqa: ANN001
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx
    from support.serve_support import free_port

    port = free_port()
    env = {**os.environ, "DATABASE_URL": catalogue.dsn, "ASSEMBLAGE_HOME": str(tmp_path / "state"),
           "OBJECT_STORE_DIR": str(catalogue.objects), "CLIP_MODEL": str(catalogue.tiny)}
    env.pop("ASSEMBLAGE_API_TOKEN", None)
    cli = Path(sys.executable).parent / "assemblage"
    proc = subprocess.Popen([str(cli), "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240  # a loaded 2-core machine imports torch slowly
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.3)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        shards = client.get("/api/shards").json()["items"]
        assert [s["shard"] for s in shards] == ["cars", "parks"]
        hits = client.get("/api/search", params={"q": "bicycle"}).json()["items"]
        assert hits[0]["image_id"] == catalogue.ids["green-0.jpg"]
        thumb = client.get(hits[0]["thumbnail"])
        assert thumb.status_code == 200 and thumb.content[:4] == b"RIFF"
        assert "openapi" in client.get("/openapi.json").json()
        client.close()
    finally:
        proc.terminate()
        try:
            # a graceful shutdown on SIGTERM: uvicorn then re-raises the signal (exit status -15)
            assert proc.wait(timeout=60) in (0, -15)
        finally:
            if proc.poll() is None:
                proc.kill()
