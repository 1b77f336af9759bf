"""Objects in an S3-compatible bucket (Cloudflare R2, AWS S3, MinIO) through boto3 and dagster-aws."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from assemblage_assets.core import settings
from resources.object_store.base import (
    _MIB,
    ObjectSpec,
    ObjectStore,
    ObjectStoreError,
    PermanentObjectError,
    StoreConfigError,
    TransientStoreError,
    Visibility,
    _file_sha256,
    _read_verified,
)

MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # the SigV4 limit on S3 and R2


def _resolve(value: Any) -> Any:
    """Plain value of a field that may still hold an unresolved ``dg.EnvVar`` (used outside Dagster)."""
    return value.get_value() if isinstance(value, dg.EnvVar) else value


class S3ClientResource(S3Resource):
    """dagster-aws's ``S3Resource`` with the client tuning bulk uploads need.

    ``S3Resource.get_client`` only sets ``max_attempts``; this adds the retry mode
    (``standard`` or ``adaptive``), a connection pool sized to the upload concurrency,
    connect/read timeouts and the addressing style, keeping every other field of the parent.
    """

    retry_mode: str = Field(default="standard", description="botocore retry mode: standard or adaptive.")
    connect_timeout: float = Field(default=10.0, description="Seconds to open a connection.")
    read_timeout: float = Field(default=60.0, description="Seconds to wait for a response.")
    addressing_style: str = Field(default="auto", description="auto, virtual or path (MinIO needs path).")

    def get_client(self, max_pool_connections: int = 10) -> Any:  # type: ignore[override]
        import boto3
        from botocore.config import Config

        key_id = _resolve(self.aws_access_key_id)
        secret = _resolve(self.aws_secret_access_key)
        if bool(key_id) != bool(secret):
            missing = "R2_SECRET_ACCESS_KEY" if key_id else "R2_ACCESS_KEY_ID"
            raise StoreConfigError(f"incomplete credentials: {missing} is not set")
        session = boto3.session.Session(profile_name=self.profile_name)
        config = Config(
            retries={"mode": self.retry_mode, "max_attempts": self.max_attempts},
            max_pool_connections=max_pool_connections,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            tcp_keepalive=True,
            s3={"addressing_style": self.addressing_style},
            # presigned URLs too (botocore signs them SigV2 in some regions otherwise; R2 wants SigV4)
            signature_version="s3v4",
        )
        client = session.client(
            "s3",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            aws_session_token=_resolve(self.aws_session_token),
            config=config,
        )
        if self.use_unsigned_session:
            from botocore.handlers import disable_signing

            client.meta.events.register("choose-signer.s3.*", disable_signing)
        return client


# Error codes that mean "this configuration cannot work" rather than "this object failed".
_CONFIG_CODES = {
    "AccessDenied": "access denied: the credentials cannot use this bucket",
    "AllAccessDisabled": "access to this bucket is disabled",
    "InvalidAccessKeyId": "the access key id is not known to the server: check R2_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "the secret does not match the access key: check R2_SECRET_ACCESS_KEY",
    "InvalidToken": "the session token is invalid",
    "ExpiredToken": "the session token has expired",
    "AuthorizationHeaderMalformed": "the region does not match the bucket: check S3_REGION",
    "PermanentRedirect": "the bucket lives in another region or endpoint: check S3_REGION / S3_ENDPOINT_URL",
    "NoSuchBucket": "the bucket does not exist: check R2_BUCKET",
    "InvalidBucketName": "the bucket name is invalid: check R2_BUCKET",
    "403": "access denied (HTTP 403): check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY and the token's bucket permissions",
    "404": "the bucket does not exist: check R2_BUCKET",
}
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "TooManyRequestsException",
    "RequestTimeout", "RequestTimeoutException", "ServiceUnavailable", "InternalError",
    "BadDigest", "XAmzContentSHA256Mismatch", "IncompleteBody", "429",
}


def classify_error(exc: BaseException, what: str) -> ObjectStoreError:
    """Map a boto3/botocore exception to config / transient / permanent (messages carry no secrets)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        EndpointConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, ObjectStoreError):
        return exc
    if isinstance(exc, S3UploadFailedError) and exc.__cause__ is not None:
        return classify_error(exc.__cause__, what)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StoreConfigError(
            "no credentials for the object store: set R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY "
            "(or AWS credentials)"
        )
    if isinstance(exc, EndpointConnectionError):
        return TransientStoreError(f"cannot reach the endpoint for {what}: {exc}")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _CONFIG_CODES:
            return StoreConfigError(f"{what}: {_CONFIG_CODES[code]}")
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientStoreError(f"{what}: {code or status} {error.get('Message', '')}".strip())
        return PermanentObjectError(f"s3-{code or status}", f"{what}: {code or status} {error.get('Message', '')}".strip())
    if isinstance(exc, ConnectionError | HTTPClientError | BotoCoreError | OSError):
        return TransientStoreError(f"{what}: {type(exc).__name__}: {exc}")
    return PermanentObjectError("store-error", f"{what}: {type(exc).__name__}: {exc}")


_CONNECTION_FIELDS = (
    "endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
    "profile_name", "max_attempts", "retry_mode", "connect_timeout", "read_timeout", "addressing_style",
)


class S3ObjectStore(ObjectStore):
    """Objects in an S3-compatible bucket (Cloudflare R2, AWS S3, MinIO), originals optionally in
    a separate private bucket. Uploads send a SHA-256 checksum the server verifies; files above
    the multipart threshold go through boto3's managed multipart transfer."""

    bucket: str = Field(description="Bucket of thumbnails and previews, and of originals unless private_bucket is set.")
    private_bucket: str = Field(default="", description="Separate bucket for originals (R2_PRIVATE_BUCKET).")
    multipart_threshold_mb: int = Field(default=16, description="Files at least this large use multipart upload.")
    multipart_chunksize_mb: int = Field(default=8, description="Part size of multipart uploads.")
    multipart_concurrency: int = Field(default=4, description="Parallel parts of one multipart upload.")
    # Connection: the fields of dagster-aws's S3Resource (see S3ClientResource), kept flat here
    # because nested resources trip a deprecation inside Dagster 1.13.27 on every run.
    endpoint_url: str | None = Field(default=None, description="S3_ENDPOINT_URL, or the R2 endpoint of R2_ACCOUNT_ID.")
    region_name: str | None = Field(default=None, description="S3_REGION ('auto' for R2).")
    aws_access_key_id: str | None = Field(default=None, description="R2_ACCESS_KEY_ID (an EnvVar).")
    aws_secret_access_key: str | None = Field(default=None, description="R2_SECRET_ACCESS_KEY (an EnvVar).")
    aws_session_token: str | None = None
    profile_name: str | None = None
    max_attempts: int = Field(default=6, description="Attempts per request, retries included (S3_MAX_ATTEMPTS).")
    retry_mode: str = Field(default="standard", description="botocore retry mode: standard or adaptive (S3_RETRY_MODE).")
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    addressing_style: str = Field(default="auto", description="auto, virtual or path (S3_ADDRESSING_STYLE).")

    _client: Any = PrivateAttr(default=None)
    _client_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def connection_from_env(cls) -> dict[str, Any]:
        """Connection settings from the older loader's ``.env`` names (secrets stay ``EnvVar``s)."""
        account = settings.env_str("R2_ACCOUNT_ID")
        endpoint = settings.env_str("S3_ENDPOINT_URL") or (
            f"https://{account}.r2.cloudflarestorage.com" if account else None
        )
        region = settings.env_str("S3_REGION") or ("auto" if account and not settings.env_str("S3_ENDPOINT_URL") else None)
        fields: dict[str, Any] = {
            "endpoint_url": endpoint,
            "region_name": region,
            "max_attempts": settings.env_int("S3_MAX_ATTEMPTS", 6),
            "retry_mode": settings.env_str("S3_RETRY_MODE", "standard"),
            "addressing_style": settings.env_str(
                "S3_ADDRESSING_STYLE", "path" if settings.env_str("S3_ENDPOINT_URL") else "auto"
            ),
        }
        # The older loader's names first; without them boto3's own chain (AWS_* variables,
        # profiles, instance roles) applies.
        for field_name, names in (
            ("aws_access_key_id", ("R2_ACCESS_KEY_ID", "S3_ACCESS_KEY_ID")),
            ("aws_secret_access_key", ("R2_SECRET_ACCESS_KEY", "S3_SECRET_ACCESS_KEY")),
        ):
            name = next((n for n in names if settings.env_str(n)), None)
            if name:
                fields[field_name] = dg.EnvVar(name)
        return fields

    def s3_resource(self, **overrides: Any) -> S3ClientResource:
        """The dagster-aws S3 resource these connection settings describe."""
        fields = {name: getattr(self, name) for name in _CONNECTION_FIELDS}
        return S3ClientResource(**{**fields, **overrides})

    def client(self) -> Any:
        """The boto3 client (thread-safe, shared by the upload threads), created on first use."""
        with self._client_lock:
            if self._client is None:
                client = self.s3_resource().get_client(
                    max_pool_connections=self.concurrency + self.multipart_concurrency
                )

                def count(model: Any, **_: Any) -> None:
                    self._count(model.name)

                client.meta.events.register("before-call.s3", count)
                self._client = client
            return self._client

    def bucket_for(self, visibility: Visibility) -> str:
        return self.private_bucket if visibility == "private" and self.private_bucket else self.bucket

    def describe(self) -> str:
        where = self.endpoint_url or "AWS S3"
        buckets = f"s3://{self.bucket}" + (f" + private s3://{self.private_bucket}" if self.private_bucket else "")
        return f"{buckets}/{self.key('')} at {where}"

    def preflight(self) -> None:
        """One ListObjectsV2 (MaxKeys=1) per bucket with a fast-failing client: a wrong endpoint,
        a missing bucket or bad credentials surface here as one clear error, before any upload."""
        from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

        client = self.s3_resource(max_attempts=2, connect_timeout=5.0, read_timeout=20.0).get_client(max_pool_connections=2)
        for setting, bucket in (("R2_BUCKET", self.bucket), ("R2_PRIVATE_BUCKET", self.private_bucket)):
            if not bucket:
                continue
            try:
                client.list_objects_v2(Bucket=bucket, MaxKeys=1, Prefix=self.key(""))
            except (EndpointConnectionError, ConnectTimeoutError):
                endpoint = self.endpoint_url or "the AWS S3 endpoint"
                raise StoreConfigError(
                    f"cannot reach the object store at {endpoint}: check S3_ENDPOINT_URL / R2_ACCOUNT_ID "
                    "and the network"
                ) from None
            except Exception as exc:  # noqa: BLE001 - classified below
                err = classify_error(exc, f"bucket {bucket!r} ({setting})")
                if isinstance(err, TransientStoreError):
                    raise err from None
                raise StoreConfigError(str(err)) from None

    def put(self, spec: ObjectSpec) -> int:
        from boto3.s3.transfer import TransferConfig

        bucket = self.bucket_for(spec.visibility)
        if spec.copy_source:
            try:
                return self._copy(spec, bucket)
            except ObjectStoreError:
                if not any(p.exists() for p in spec.sources):
                    raise
                # else upload from the staged copy below
        path = next((p for p in spec.sources if p.exists()), None)
        size = path.stat().st_size if path is not None else 0
        threshold = self.multipart_threshold_mb * _MIB
        try:
            if path is not None and size >= threshold:
                if spec.sha256 and _file_sha256(path).hex() != spec.sha256:
                    raise PermanentObjectError("source-changed", f"{path} changed since it was scanned")
                # Multipart: boto3 checksums every part and the server verifies each of them.
                self.client().upload_file(
                    str(path),
                    bucket,
                    spec.key,
                    ExtraArgs={
                        "ContentType": spec.content_type,
                        "CacheControl": spec.cache_control,
                        "ChecksumAlgorithm": "SHA256",
                    },
                    Config=TransferConfig(
                        multipart_threshold=threshold,
                        multipart_chunksize=self.multipart_chunksize_mb * _MIB,
                        max_concurrency=self.multipart_concurrency,
                    ),
                )
                return size
            _, data, digest = _read_verified(spec.sources, spec.sha256)
            # The SHA-256 travels as x-amz-checksum-sha256: the server rejects corrupted bodies.
            self.client().put_object(
                Bucket=bucket,
                Key=spec.key,
                Body=data,
                ContentType=spec.content_type,
                CacheControl=spec.cache_control,
                ChecksumSHA256=base64.b64encode(digest).decode(),
            )
            return len(data)
        except Exception as exc:
            raise classify_error(exc, f"upload of {spec.key}") from exc

    def _copy(self, spec: ObjectSpec, bucket: str) -> int:
        """Server-side CopyObject from a source bucket on this endpoint: the bytes never leave
        the provider. The copy's SHA-256 (computed by the server) must be the content hash."""
        source_bucket, _, source_key = (spec.copy_source or "").removeprefix("s3://").partition("/")
        # The scanned version only: a server that returns no SHA-256 for the copy (so the check
        # below cannot run) still refuses, with 412, to copy an object changed since the scan.
        condition = {"CopySourceIfMatch": f'"{spec.copy_source_etag}"'} if spec.copy_source_etag else {}
        try:
            result = self.client().copy_object(
                Bucket=bucket, Key=spec.key, CopySource={"Bucket": source_bucket, "Key": source_key},
                MetadataDirective="REPLACE", ContentType=spec.content_type, CacheControl=spec.cache_control,
                ChecksumAlgorithm="SHA256", **condition,
            )
        except Exception as exc:
            raise classify_error(exc, f"server-side copy of {spec.copy_source} to {spec.key}") from exc
        checksum = result.get("CopyObjectResult", {}).get("ChecksumSHA256")
        if spec.sha256 and checksum and base64.b64decode(checksum).hex() != spec.sha256:
            self.client().delete_object(Bucket=bucket, Key=spec.key)
            raise PermanentObjectError("source-changed", f"{spec.copy_source} changed since it was scanned")
        if spec.size is not None:
            return spec.size
        return self.head_size(spec.visibility, spec.key) or 0

    def list_sizes(self, visibility: Visibility, prefix: str) -> Iterator[tuple[str, int]]:
        paginator = self.client().get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket_for(visibility), Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"], int(item["Size"])
        except Exception as exc:
            raise classify_error(exc, f"listing of {prefix!r}") from exc

    def head_size(self, visibility: Visibility, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client().head_object(Bucket=self.bucket_for(visibility), Key=key)["ContentLength"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise classify_error(exc, f"HEAD of {key}") from exc
        except Exception as exc:
            raise classify_error(exc, f"HEAD of {key}") from exc

    def read(self, visibility: Visibility, key: str, max_bytes: int = 16 * _MIB) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            reply = self.client().get_object(Bucket=self.bucket_for(visibility), Key=key)
            if int(reply.get("ContentLength") or 0) > max_bytes:
                reply["Body"].close()
                raise PermanentObjectError("too-large", f"{key} is over {max_bytes:,} bytes")
            return reply["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise classify_error(exc, f"GET of {key}") from exc
        except ObjectStoreError:
            raise
        except Exception as exc:
            raise classify_error(exc, f"GET of {key}") from exc

    def presigned_get_url(
        self, visibility: Visibility, key: str, expires_in: int, *, content_type: str | None = None,
        cache_control: str | None = None,
    ) -> str | None:
        if not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
            raise StoreConfigError(f"presigned URLs last 1 to {MAX_PRESIGN_SECONDS} seconds, not {expires_in}")
        params = {"Bucket": self.bucket_for(visibility), "Key": key}
        if content_type:
            params["ResponseContentType"] = content_type
        if cache_control:
            params["ResponseCacheControl"] = cache_control
        try:
            return self.client().generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)
        except Exception as exc:
            raise classify_error(exc, f"presigning {key}") from exc

    def url(self, visibility: Visibility, key: str) -> str:
        if visibility == "public" and self.public_base_url:
            return f"{self.public_base_url.rstrip('/')}/{key}"
        return f"s3://{self.bucket_for(visibility)}/{key}"
