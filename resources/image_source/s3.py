"""An S3-compatible bucket and prefix as an image source (AWS S3, Cloudflare R2, MinIO, the
uploads bucket of a Supabase project through its S3 endpoint), through boto3.

Listing pages through ListObjectsV2 with continuation tokens (the paginator), so a bucket of
millions of keys is listed in flat memory; the ETag is the change marker; a GET is made only
for entries that are new or changed, with ``If-Match`` so the bytes are the ones listed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr

from assemblage_assets.core import settings
from resources.image_source.base import (
    ROOT,
    EntryError,
    ImageSource,
    SourceConfigError,
    SourceEntry,
    SourceShard,
    TransientSourceError,
    TruncatedDownloadError,
    write_stream,
)
from resources.request_counts import RequestCounts

_CHUNK = 1024 * 1024
_CONFIG_CODES = {
    "AccessDenied": "access denied: the credentials cannot read this bucket",
    "InvalidAccessKeyId": "the access key id is not known to the server",
    "SignatureDoesNotMatch": "the secret does not match the access key",
    "ExpiredToken": "the credentials have expired",
    "InvalidToken": "the session token is invalid",
    "NoSuchBucket": "the bucket does not exist",
    "PermanentRedirect": "the bucket lives in another region or endpoint",
    "AuthorizationHeaderMalformed": "the region does not match the bucket",
}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestTimeout",
                    "ServiceUnavailable", "InternalError", "503", "500", "429"}


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix ending with ``/`` or empty)."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"an S3 source needs a bucket: {uri!r} (expected s3://bucket/prefix)")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3Source(ImageSource):
    """Objects under ``s3://bucket/prefix``: each first-level prefix is a shard."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = Field(default=None, description="SOURCE_S3_ENDPOINT_URL, else the object store's.")
    region_name: str | None = None
    access_key_env: str = Field(default="", description="Name of the variable holding the access key id.")
    secret_key_env: str = Field(default="", description="Name of the variable holding the secret.")
    addressing_style: str = "auto"
    page_size: int = Field(default=1000, description="Keys per ListObjectsV2 page (SOURCE_S3_PAGE_SIZE).")
    max_attempts: int = 6

    _client: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _counts: RequestCounts = PrivateAttr(default_factory=RequestCounts)

    @classmethod
    def from_uri(cls, uri: str, **fields: Any) -> S3Source:
        """The bucket source of ``uri`` with SOURCE_S3_* settings, falling back to the object store's."""
        from resources.object_store.s3 import S3ObjectStore

        bucket, prefix = parse_uri(uri)
        store = S3ObjectStore.connection_from_env()
        names = {}
        for field_name, own, fallback in (("access_key_env", "SOURCE_S3_ACCESS_KEY_ID", ("R2_ACCESS_KEY_ID", "S3_ACCESS_KEY_ID")),
                                          ("secret_key_env", "SOURCE_S3_SECRET_ACCESS_KEY", ("R2_SECRET_ACCESS_KEY", "S3_SECRET_ACCESS_KEY"))):
            names[field_name] = next((n for n in (own, *fallback) if settings.env_str(n)), "")
        endpoint = settings.env_str("SOURCE_S3_ENDPOINT_URL") or store["endpoint_url"]
        return cls(
            bucket=bucket, prefix=prefix, endpoint_url=endpoint,
            region_name=settings.env_str("SOURCE_S3_REGION") or store["region_name"],
            addressing_style="path" if settings.env_str("SOURCE_S3_ENDPOINT_URL") else store["addressing_style"],
            page_size=settings.env_int("SOURCE_S3_PAGE_SIZE", 1000),
            **names, **fields,
        )

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def credentials(self) -> tuple[str | None, str | None]:
        """The access key id and secret from the named variables (None: boto3's own chain)."""
        key = settings.env_str(self.access_key_env) if self.access_key_env else ""
        secret = settings.env_str(self.secret_key_env) if self.secret_key_env else ""
        if bool(key) != bool(secret):
            missing = "SOURCE_S3_SECRET_ACCESS_KEY" if key else "SOURCE_S3_ACCESS_KEY_ID"
            raise SourceConfigError(f"incomplete credentials for {self.uri}: {missing} is not set")
        return key or None, secret or None

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                key, secret = self.credentials()
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint_url, region_name=self.region_name,
                    aws_access_key_id=key, aws_secret_access_key=secret,
                    config=Config(retries={"mode": "standard", "max_attempts": self.max_attempts},
                                  max_pool_connections=16, s3={"addressing_style": self.addressing_style}),
                )
                self._counts.count_boto3_calls(self._client, "s3")
            return self._client

    def request_counts(self) -> dict[str, int]:
        return self._counts.snapshot()

    def _error(self, exc: BaseException, what: str) -> Exception:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            IncompleteReadError,
            NoCredentialsError,
            ResponseStreamingError,
        )

        if isinstance(exc, NoCredentialsError):
            return SourceConfigError(f"no credentials for {self.uri}: set SOURCE_S3_ACCESS_KEY_ID and SOURCE_S3_SECRET_ACCESS_KEY")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in _CONFIG_CODES:
                setting = "the bucket in IMAGE_SOURCES" if code == "NoSuchBucket" else self._credential_names()
                return SourceConfigError(f"{what}: {_CONFIG_CODES[code]}: check {setting}")
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return TransientSourceError(f"{what}: {code or status}")
            if code in ("NoSuchKey", "404"):
                return EntryError("source-missing", f"{what}: deleted since it was listed")
            if code in ("PreconditionFailed", "412"):
                return EntryError("source-changed", f"{what}: changed since it was listed; read again next scan")
            return EntryError(f"s3-{code or status}", f"{what}: {code or status}")
        if isinstance(exc, ResponseStreamingError | IncompleteReadError):
            return TruncatedDownloadError(f"{what}: download truncated")
        if isinstance(exc, BotoCoreError | OSError):
            return TransientSourceError(f"{what}: {type(exc).__name__}")
        return exc if isinstance(exc, Exception) else RuntimeError(str(exc))

    def _credential_names(self) -> str:
        names = [n for n in (self.access_key_env, self.secret_key_env) if n]
        return " / ".join(names) or "SOURCE_S3_ACCESS_KEY_ID / SOURCE_S3_SECRET_ACCESS_KEY (or AWS credentials)"

    def preflight(self) -> None:
        try:
            self.client().list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as exc:  # noqa: BLE001 - classified
            err = self._error(exc, f"bucket {self.bucket!r}")
            if isinstance(err, EntryError):  # a per-object code on a bucket call: still the setup
                raise SourceConfigError(str(err)) from None
            raise err from None

    def _pages(self, prefix: str, delimiter: str | None) -> Iterator[dict[str, Any]]:
        paginator = self.client().get_paginator("list_objects_v2")
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix,
                                "PaginationConfig": {"PageSize": self.page_size}}
        if delimiter:
            args["Delimiter"] = delimiter
        try:
            yield from paginator.paginate(**args)
        except Exception as exc:
            raise self._error(exc, f"listing of {self.uri}") from None

    def shards(self) -> Iterator[SourceShard]:
        top_level = False
        for page in self._pages(self.prefix, "/"):
            for common in page.get("CommonPrefixes", []):
                yield SourceShard(self.uri, common["Prefix"][len(self.prefix):].rstrip("/"))
            top_level = top_level or any(not o["Key"].endswith("/") for o in page.get("Contents", []))
        if top_level:
            yield SourceShard(self.uri, ROOT)

    def entries(self, shard: SourceShard) -> Iterator[SourceEntry]:
        prefix = f"{self.prefix}{shard.name}/" if shard.recursive else self.prefix
        for page in self._pages(prefix, None if shard.recursive else "/"):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):  # "folder" placeholder objects
                    yield self._entry(item["Key"], item["Size"], item["ETag"], item.get("LastModified"))

    def _entry(self, key: str, size: int, etag: str, modified: Any) -> SourceEntry:
        return SourceEntry(f"s3://{self.bucket}/{key}", int(size), etag.strip('"'),
                           modified.timestamp() if modified is not None else None)

    def key_of(self, uri: str) -> str:
        return uri.removeprefix(f"s3://{self.bucket}/")

    def entry(self, uri: str) -> SourceEntry:
        try:
            head = self.client().head_object(Bucket=self.bucket, Key=self.key_of(uri))
        except Exception as exc:
            raise self._error(exc, uri) from None
        return self._entry(self.key_of(uri), head["ContentLength"], head["ETag"], head.get("LastModified"))

    def download(self, entry: SourceEntry, dest: Path) -> int:
        try:
            response = self.client().get_object(Bucket=self.bucket, Key=self.key_of(entry.uri), IfMatch=f'"{entry.marker}"')
            return write_stream(response["Body"].iter_chunks(_CHUNK), dest, entry.size)
        except TransientSourceError:
            raise
        except Exception as exc:
            if _code(exc) in ("AccessDenied", "403"):  # the listing just worked: this one object is forbidden
                raise EntryError("forbidden", f"{entry.uri}: access denied to this object") from None
            raise self._error(exc, entry.uri) from None


def shares_endpoint(source: S3Source, store: Any) -> bool:
    """Whether the object store can copy this source's objects server-side: an S3 store on the
    same endpoint with the same access key (compared in memory, never logged)."""
    from resources.object_store.s3 import S3ObjectStore, _resolve

    if not isinstance(store, S3ObjectStore):
        return False
    same_endpoint = (store.endpoint_url or "").rstrip("/") == (source.endpoint_url or "").rstrip("/")
    try:
        key, _ = source.credentials()
    except SourceConfigError:
        return False
    return same_endpoint and (_resolve(store.aws_access_key_id) or None) == key
