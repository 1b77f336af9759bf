"""The object store resource against moto's standalone server over real HTTP (through a counting
proxy on 127.0.0.1) and against the local directory: layout, headers, integrity, multipart,
existence checks, preflight errors and configuration from the environment."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
from pathlib import Path

import dagster as dg
import pytest
from botocore.exceptions import ClientError
from support.s3_loopback import ACCESS_KEY, SECRET_KEY, S3Env, set_moto_auth

from resources import object_store
from resources.object_store import (
    DERIVATIVE_CACHE_CONTROL,
    LocalObjectStore,
    ObjectSpec,
    PermanentObjectError,
    S3ObjectStore,
    StoreConfigError,
    TransientStoreError,
    classify_error,
    plan_listing,
)

IDS = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(40)]  # hex names, like image uuids


@pytest.fixture
def s3() -> S3Env:
    return S3Env.shared()


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _spec(key: str, path: Path, **kw) -> ObjectSpec:
    kw.setdefault("visibility", "public")
    kw.setdefault("content_type", "image/webp")
    kw.setdefault("cache_control", DERIVATIVE_CACHE_CONTROL)
    return ObjectSpec(key=key, sources=(path,), **kw)


def test_s3_put_sends_checksum_content_type_and_cache_control(s3: S3Env, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    store = s3.store(bucket, prefix="assemblage")
    data = os.urandom(20_000)
    key = store.key("thumbnail/abc.webp")
    assert key == "assemblage/thumbnail/abc.webp"
    assert store.put(_spec(key, _file(tmp_path, "t.webp", data))) == len(data)

    got = s3.direct().get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == data
    assert got["ContentType"] == "image/webp"
    assert got["CacheControl"] == "public, max-age=31536000, immutable"
    (put,) = [r for r in s3.proxy.seen if r.method == "PUT"]
    # the server can verify the body against the checksum the client computed
    assert put.headers["x-amz-checksum-sha256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert store.url("public", key) == f"s3://{bucket}/{key}"
    assert store.request_counts()["PutObject"] == 1


def test_originals_go_to_the_private_bucket_and_derivatives_to_the_public_url(s3: S3Env, tmp_path: Path) -> None:
    public, private = s3.new_bucket("pub"), s3.new_bucket("priv")
    store = s3.store(public, private_bucket=private, public_base_url="https://img.example.org/")
    path = _file(tmp_path, "o.jpg", b"\xff\xd8\xff original")
    store.put(_spec("original/2019/07/x.jpg", path, visibility="private", content_type="image/jpeg"))
    store.put(_spec("thumbnail/x.webp", path))
    assert set(s3.keys(private)) == {"original/2019/07/x.jpg"}
    assert set(s3.keys(public)) == {"thumbnail/x.webp"}
    assert store.url("private", "original/2019/07/x.jpg") == f"s3://{private}/original/2019/07/x.jpg"
    assert store.url("public", "thumbnail/x.webp") == "https://img.example.org/thumbnail/x.webp"


def test_large_originals_use_multipart_with_checksummed_parts(s3: S3Env, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    store = s3.store(bucket, multipart_threshold_mb=6, multipart_chunksize_mb=5)
    data = os.urandom(11 * 1024 * 1024)
    path = _file(tmp_path, "big.tiff", data)
    spec = _spec("original/2020/01/big.tiff", path, visibility="private", content_type="image/tiff",
                 sha256=hashlib.sha256(data).hexdigest())
    assert store.put(spec) == len(data)
    parts = [r for r in s3.proxy.seen if r.method == "PUT" and "uploadId=" in r.query]
    assert len(parts) == 3 and all("x-amz-checksum-sha256" in r.headers for r in parts)
    got = s3.direct().get_object(Bucket=bucket, Key=spec.key)
    assert got["Body"].read() == data and got["ContentType"] == "image/tiff"


def test_a_source_that_changed_since_the_scan_is_a_permanent_error(s3: S3Env, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    store = s3.store(bucket)
    path = _file(tmp_path, "o.jpg", b"new bytes")
    spec = _spec("original/2019/07/x.jpg", path, visibility="private", sha256=hashlib.sha256(b"old").hexdigest())
    with pytest.raises(PermanentObjectError) as err:
        store.put(spec)
    assert err.value.kind == "source-changed"
    missing = _spec("thumbnail/y.webp", tmp_path / "gone.webp")
    with pytest.raises(PermanentObjectError, match="no source file") as err:
        store.put(missing)
    assert err.value.kind == "source-missing"
    assert s3.proxy.counts()["PUT"] == 0 and s3.keys(bucket) == {}


def test_existing_lists_once_instead_of_a_head_per_object(s3: S3Env, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    direct = s3.direct()
    keys = [f"p/thumbnail/{i}.webp" for i in IDS[:30]]
    for key in keys[:20]:
        direct.put_object(Bucket=bucket, Key=key, Body=b"x" * 7)
    listing = s3.store(bucket, prefix="p")
    assert listing.existing("public", keys) == dict.fromkeys(keys[:20], 7)
    assert s3.proxy.counts() == {"LIST": 1}

    s3.proxy.reset()
    heads = s3.store(bucket, prefix="p", existence_check="head")
    assert heads.existing("public", keys) == dict.fromkeys(keys[:20], 7)
    assert s3.proxy.counts() == {"HEAD": 30}

    s3.proxy.reset()
    assert s3.store(bucket, existence_check="none").existing("public", keys) == {}
    assert s3.proxy.counts() == {}


def test_listing_plan_narrows_prefixes_in_a_crowded_bucket() -> None:
    keys = [f"thumbnail/{i}.webp" for i in IDS]
    # a fresh bucket: one listing of the whole directory
    assert plan_listing(keys, {}) == (["thumbnail/"], [])
    # 5M thumbnails already there: 40 keys are cheaper one HEAD each than 5,000 pages
    prefixes, heads = plan_listing(keys, {"thumbnail/": 5_000_000})
    assert prefixes == [] and sorted(heads) == sorted(keys)
    # a big shard among 50k: 52 pages of the whole directory beat 2,000 HEADs
    many = [f"thumbnail/{hashlib.sha1(str(i).encode()).hexdigest()}.webp" for i in range(2_000)]
    assert plan_listing(many, {"thumbnail/": 50_000}) == (["thumbnail/"], [])
    # 300 keys among 1M: 3-character prefixes of one page each (~290) beat both alternatives
    some = many[:300]
    prefixes, heads = plan_listing(some, {"thumbnail/": 1_000_000})
    assert heads == [] and 16 < len(prefixes) < 300
    assert {len(p) for p in prefixes} == {len("thumbnail/abc")}
    assert all(any(k.startswith(p) for p in prefixes) for k in some)


def test_preflight_names_a_missing_bucket(s3: S3Env) -> None:
    store = s3.store("no-such-bucket-here")
    with pytest.raises(StoreConfigError, match="no-such-bucket-here.*R2_BUCKET") as err:
        store.preflight()
    assert SECRET_KEY not in str(err.value)


def test_preflight_names_an_unreachable_endpoint_quickly(s3: S3Env) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = s3.store("any", endpoint_url=f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(StoreConfigError, match="cannot reach.*S3_ENDPOINT_URL"):
        store.preflight()
    assert time.monotonic() - started < 10


def test_preflight_names_bad_credentials_without_echoing_them(s3: S3Env) -> None:
    bucket = s3.new_bucket()
    wrong_secret = "wrong-secret-value-123"
    store = s3.store(bucket, aws_access_key_id="AKIAWRONGWRONGWRONG1", aws_secret_access_key=wrong_secret)
    set_moto_auth(s3.upstream_url, enabled=True)  # from now on moto checks keys against IAM
    try:
        with pytest.raises(StoreConfigError, match="R2_ACCESS_KEY_ID") as err:
            store.preflight()
    finally:
        set_moto_auth(s3.upstream_url, enabled=False)
    assert wrong_secret not in str(err.value) and "AKIAWRONG" not in str(err.value)


def test_incomplete_credentials_are_named(s3: S3Env) -> None:
    store = s3.store("any", aws_secret_access_key=None)
    with pytest.raises(StoreConfigError, match="R2_SECRET_ACCESS_KEY is not set"):
        store.preflight()


def test_errors_are_classified_into_config_transient_and_permanent() -> None:
    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    assert isinstance(classify_error(client_error("SignatureDoesNotMatch", 403), "x"), StoreConfigError)
    assert isinstance(classify_error(client_error("NoSuchBucket", 404), "x"), StoreConfigError)
    assert isinstance(classify_error(client_error("SlowDown", 503), "x"), TransientStoreError)
    assert isinstance(classify_error(client_error("InternalError", 500), "x"), TransientStoreError)
    permanent = classify_error(client_error("EntityTooLarge", 400), "x")
    assert isinstance(permanent, PermanentObjectError) and permanent.kind == "s3-EntityTooLarge"


def test_local_store_writes_atomically_and_lists_only_complete_objects(tmp_path: Path) -> None:
    store = LocalObjectStore(root=str(tmp_path / "objects"), public_base_url="https://cdn.example/")
    store.preflight()
    data = b"thumbnail bytes"
    key = store.key("thumbnail/abc.webp")
    assert store.put(_spec(key, _file(tmp_path, "t.webp", data), sha256=hashlib.sha256(data).hexdigest())) == len(data)
    stored = tmp_path / "objects" / "thumbnail" / "abc.webp"
    assert stored.read_bytes() == data
    # a temp file left by a killed writer is not an object
    (stored.parent / ".abd.webp.123.tmp").write_bytes(b"partial")
    assert dict(store.list_sizes("public", "thumbnail/ab")) == {"thumbnail/abc.webp": len(data)}
    assert store.existing("public", ["thumbnail/abc.webp", "thumbnail/abd.webp"]) == {"thumbnail/abc.webp": len(data)}
    assert store.url("public", key) == "https://cdn.example/thumbnail/abc.webp"
    assert store.url("private", "original/2019/07/x.jpg") == (tmp_path / "objects/original/2019/07/x.jpg").as_uri()
    # a changed source never replaces the object
    with pytest.raises(PermanentObjectError):
        store.put(_spec(key, _file(tmp_path, "t2.webp", b"other"), sha256=hashlib.sha256(data).hexdigest()))
    assert stored.read_bytes() == data
    assert [p.name for p in stored.parent.iterdir() if p.name.endswith(".tmp")] == [".abd.webp.123.tmp"]


def test_local_store_preflight_rejects_an_unwritable_root(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreConfigError, match="not writable"):
        LocalObjectStore(root=str(blocker / "objects")).preflight()


def test_from_env_defaults_to_the_local_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("R2_BUCKET", "S3_BUCKET", "OBJECT_STORE_DIR", "SKIP_R2_HEAD", "UPLOAD_CONCURRENCY", "R2_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ASSEMBLAGE_HOME", str(tmp_path / "home"))
    store = object_store.from_env()
    assert isinstance(store, LocalObjectStore)
    assert store.root == str(tmp_path / "home" / "objects")
    assert store.concurrency == 8 and store.existence_check == "list"


def test_from_env_reads_the_older_loaders_r2_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "R2_ACCOUNT_ID": "0123abcd", "R2_BUCKET": "photos", "R2_PREFIX": "v2",
        "R2_ACCESS_KEY_ID": ACCESS_KEY, "R2_SECRET_ACCESS_KEY": SECRET_KEY,
        "IMAGE_BASE_URL": "https://images.example.org", "UPLOAD_CONCURRENCY": "16", "SKIP_R2_HEAD": "true",
        "R2_PRIVATE_BUCKET": "photos-originals",
    }
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("S3_REGION", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store = object_store.from_env()
    assert isinstance(store, S3ObjectStore)
    assert store.endpoint_url == "https://0123abcd.r2.cloudflarestorage.com"
    assert store.region_name == "auto"
    assert (store.bucket, store.private_bucket, store.prefix) == ("photos", "photos-originals", "v2")
    assert store.concurrency == 16 and store.existence_check == "none"
    # secrets stay environment references: the UI and run config show the name, not the value
    assert isinstance(store.aws_secret_access_key, dg.EnvVar)
    assert store.aws_secret_access_key.env_var_name == "R2_SECRET_ACCESS_KEY"
    assert SECRET_KEY not in store.describe()
    with store.process_config_and_initialize_cm() as resolved:
        client = resolved.client()
        assert client.meta.config.max_pool_connections == 16 + resolved.multipart_concurrency
        assert client.meta.config.retries["mode"] == "standard"


def test_s3_endpoint_url_overrides_the_r2_endpoint_and_uses_path_style(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_BUCKET", "local-minio")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("R2_ACCOUNT_ID", "ignored")
    monkeypatch.delenv("R2_BUCKET", raising=False)
    store = object_store.from_env()
    assert isinstance(store, S3ObjectStore)
    assert store.endpoint_url == "http://127.0.0.1:9000"
    assert store.addressing_style == "path" and store.region_name is None
