"""Validate one source file and describe it from its header: format, size, hash, EXIF.

Nothing here decodes pixels; truncated or corrupt pixel data is caught by the derivatives
stage, which decodes every image exactly once.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from PIL import Image

from assemblage_assets.core.imaging import (
    APPROVED_FORMATS,
    frame_count,
    image_id_for,
    missing_decoder,
    prepare_decoder,
    sniff_format,
)
from assemblage_assets.core.settings import image_extensions
from assemblage_assets.images.exif import extract_exif


@dataclass
class ProbeResult:
    status: str  # 'pending' (a valid candidate), 'failed' or 'rejected'
    error_kind: str | None = None
    error_message: str | None = None
    content_hash: str | None = None
    image_id: uuid.UUID | None = None
    bytes: int = 0
    width: int = 0
    height: int = 0
    format: str | None = None
    mode: str | None = None
    frame_count: int = 1
    ext: str | None = None
    exif: dict[str, Any] = field(default_factory=dict)
    captured_at: datetime | None = None
    captured_at_source: str | None = None  # the tag captured_at came from (exif._capture_time)

    @classmethod
    def failed(cls, kind: str, message: str, **known: Any) -> ProbeResult:
        return cls(status="failed", error_kind=kind, error_message=message, **known)


def probe_file(path: str, size: int, max_pixels: int, extensions: Sequence[str] | None = None) -> ProbeResult:
    """Check that ``path`` is an approved, sane image and describe it. Never raises.
    ``extensions``: the approved ones (default: ``IMAGE_EXTENSIONS``)."""
    ext = os.path.splitext(path)[1].lower()
    approved = image_extensions() if extensions is None else extensions
    if ext not in approved:
        return ProbeResult(
            status="rejected",
            error_kind="extension",
            error_message=f"extension {ext or '(none)'!r} is not one of {' '.join(approved)}",
            bytes=size,
        )
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return ProbeResult.failed("bad-name", "file name is not valid UTF-8; rename the file to ingest it", bytes=size)
    if size == 0:
        return ProbeResult.failed("empty", "zero-byte file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
            fh.seek(0)
            content_hash = hashlib.file_digest(fh, "sha256").hexdigest()
    except PermissionError as exc:
        return ProbeResult.failed("unreadable", f"permission denied: {exc.strerror}", bytes=size)
    except OSError as exc:
        return ProbeResult.failed("unreadable", f"cannot read file: {exc.strerror or exc}", bytes=size)

    known: dict[str, Any] = {"bytes": size, "content_hash": content_hash}
    detected = sniff_format(head)
    if detected is None:
        return ProbeResult.failed("not-an-image", f"content is not a recognised image (starts with {head[:8]!r})", **known)
    if detected not in APPROVED_FORMATS:
        return ProbeResult.failed("unsupported-format", f"content is {detected}, which is not an approved format", **known)
    if (missing := missing_decoder(detected)) is not None:
        return ProbeResult.failed("unsupported-format", f"content is {detected}, but {missing}", **known)
    pillow_formats, original_ext = APPROVED_FORMATS[detected]
    prepare_decoder(detected)

    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors at 2x) on big images; we enforce our own cap below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=pillow_formats) as img:
                width, height = img.size
                if width * height > max_pixels:
                    return ProbeResult.failed(
                        "bomb",
                        f"{width}x{height} = {width * height:,} pixels exceeds MAX_IMAGE_PIXELS={max_pixels:,}",
                        **known,
                    )
                frames = frame_count(img)
                exif = extract_exif(img)
                mode = img.mode
                pillow_format = img.format
    except Image.DecompressionBombError as exc:
        return ProbeResult.failed("bomb", f"decompression bomb: {exc}", **known)
    except ValueError as exc:
        if "too large" in str(exc).lower():
            return ProbeResult.failed("bomb", f"decompression bomb: {exc}", **known)
        return ProbeResult.failed("corrupt", f"corrupt {detected} header: {exc}", **known)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad input
        return ProbeResult.failed("corrupt", f"corrupt {detected} header: {type(exc).__name__}: {exc}", **known)

    exif_data = dict(exif.data)
    if exif.error:
        exif_data["_error"] = exif.error
    return ProbeResult(
        status="pending",
        content_hash=content_hash,
        image_id=image_id_for(content_hash),
        bytes=size,
        width=width,
        height=height,
        format="JPEG" if pillow_format == "MPO" else pillow_format,
        mode=mode,
        frame_count=frames,
        ext=original_ext,
        exif=exif_data,
        # Camera wall-clock time: the column has no zone, so keep the local time as shot.
        captured_at=exif.captured_at.replace(tzinfo=None) if exif.captured_at else None,
        captured_at_source=exif.captured_at_source,
    )

