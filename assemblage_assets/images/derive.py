"""``derivatives`` of a shard: thumbnail, watermarked preview and palette from one decode of
each pending image, in a process pool, committed in small batches.

Speed comes from decoding as little as possible (``core.imaging``): JPEG DCT-domain
downscaling (``draft``) and ``reduce`` before the final resample, orientation applied to the
already small image, and the thumbnail made from the preview-sized image rather than from the
source again. Files are written temp-then-rename, so the catalogue only learns of complete ones.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image

from assemblage_assets.constants import preview_key, thumbnail_key
from assemblage_assets.core.imaging import (
    DerivativeSpec,
    atomic_save,
    decode_upright,
    fit,
    flatten_on_white,
    save_thumbnail,
)
from assemblage_assets.core.perceptual import perceptual_hashes
from assemblage_assets.core.reports import Progress, StageReport
from assemblage_assets.core.thumbhash import image_thumbhash
from assemblage_assets.images import catalog, places, staging
from assemblage_assets.images.watermark import apply_watermark

PALETTE_COLOURS = 5


@dataclass
class DerivedImage:
    image_id: str
    error_kind: str | None = None
    error_message: str | None = None
    thumbnail_size: tuple[int, int] = (0, 0)
    preview_size: tuple[int, int] = (0, 0)
    palette: list[dict[str, float | str]] = field(default_factory=list)
    frame_count: int = 1
    thumbnail_key: str = ""  # the key it wrote (extension of the spec's thumbnail format)
    thumbhash: str | None = None  # base64 ThumbHash placeholder of the thumbnail (core.thumbhash)
    phash: int | None = None  # 64-bit perceptual hashes of the upright thumbnail, signed (core.perceptual)
    dhash: int | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None


def derive_image(source: str, image_id: str, cache_dir: str | Path, spec: DerivativeSpec) -> DerivedImage:
    """Write ``thumbnail/{id}.{ext}`` (``ext`` of the spec's thumbnail format, ``webp`` by default)
    and ``watermarked/{id}.jpg`` under ``cache_dir``. Never raises."""
    Image.MAX_IMAGE_PIXELS = spec.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt-EXIF and bomb warnings: handled as data below
            upright, frames = decode_upright(source, spec.preview_long_edge)
    except Image.DecompressionBombError as exc:
        return DerivedImage(image_id, "bomb", f"decompression bomb: {exc}")
    except (OSError, SyntaxError, EOFError, ValueError, TypeError, IndexError) as exc:
        return DerivedImage(image_id, "corrupt", f"cannot decode image: {type(exc).__name__}: {exc}")
    except MemoryError:
        return DerivedImage(image_id, "bomb", "not enough memory to decode the image")

    try:
        preview = fit(upright, spec.preview_long_edge, spec.preview_long_edge)
        thumbnail = fit(preview, spec.thumbnail_box, spec.thumbnail_box)
        placeholder = image_thumbhash(thumbnail)
        hashes = perceptual_hashes(thumbnail)
        # ~100 px is plenty for 5 colours and saves ~7 ms per image over the full thumbnail.
        palette = dominant_colours(thumbnail.reduce(max(1, min(thumbnail.size) // 100)), PALETTE_COLOURS)
        marked = apply_watermark(
            flatten_on_white(preview),
            text=spec.watermark_text,
            image_path=spec.watermark_image,
            opacity=spec.watermark_opacity,
        )
        cache = Path(cache_dir)
        thumb_key = thumbnail_key(image_id, spec.thumbnail_ext)
        save_thumbnail(thumbnail, cache / thumb_key, spec)
        atomic_save(marked, cache / preview_key(image_id), "JPEG", quality=spec.preview_quality, optimize=True)
    except OSError as exc:
        return DerivedImage(image_id, "derive-error", f"cannot write derivatives: {type(exc).__name__}: {exc}")
    return DerivedImage(
        image_id,
        thumbnail_size=thumbnail.size,
        preview_size=marked.size,
        palette=palette,
        frame_count=frames,
        thumbnail_key=thumb_key,
        thumbhash=placeholder,
        phash=hashes.phash,
        dhash=hashes.dhash,
    )


def dominant_colours(img: Image.Image, count: int = PALETTE_COLOURS) -> list[dict[str, float | str]]:
    """The ``count`` dominant colours as hex with their share of the (visible) pixels."""
    arr = np.asarray(img.convert("RGBA"))
    pixels = arr[arr[..., 3] > 0][:, :3] if img.mode == "RGBA" else arr[..., :3].reshape(-1, 3)
    if pixels.size == 0:
        return []
    strip = Image.fromarray(np.ascontiguousarray(pixels.reshape(-1, 1, 3)), "RGB")
    quantized = strip.quantize(colors=count, method=Image.Quantize.MEDIANCUT)
    palette = quantized.getpalette() or []
    colours = sorted(quantized.getcolors() or [], reverse=True)
    total = sum(n for n, _ in colours)
    result = []
    for n, index in colours[:count]:
        r, g, b = palette[index * 3 : index * 3 + 3]
        result.append({"hex": f"#{r:02x}{g:02x}{b:02x}", "share": round(n / total, 4)})
    return result


# --- the derivatives stage of a shard -------------------------------------------------------------


def _pool(workers: int) -> ProcessPoolExecutor | None:
    if workers <= 1:
        return None
    # spawn, not fork: Dagster's process has threads, and forking those can deadlock.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def derive_all(
    jobs: Iterator[tuple[str, str]], cache_dir: Path, spec: DerivativeSpec, workers: int
) -> Iterator[DerivedImage]:
    """Derive images in a process pool with a bounded number of tasks in flight."""
    pool = _pool(workers)
    if pool is None:
        for image_id, path in jobs:
            yield derive_image(path, image_id, cache_dir, spec)
        return
    with pool:
        in_flight: set[Future[DerivedImage]] = set()
        for image_id, path in jobs:
            in_flight.add(pool.submit(derive_image, path, image_id, cache_dir, spec))
            if len(in_flight) >= workers * 4:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        for future in in_flight:
            yield future.result()


def derive_shard(
    conn: psycopg.Connection,
    shard_key: str,
    *,
    cache_dir: Path,
    spec: DerivativeSpec,
    workers: int = 0,
    commit_every: int = 32,
    progress: Progress | None = None,
    staging_dir: Path | None = None,
) -> StageReport:
    """Derive every pending image of the shard; already-derived content is only marked processed.
    Remote entries are read from their staged copy under ``staging_dir``."""
    report = StageReport()
    started = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    total = catalog.count_pending(conn, shard_key)
    reuse: list[str] = []
    paths: dict[str, str] = {}

    def jobs() -> Iterator[tuple[str, str]]:
        for row in catalog.pending_images(conn, shard_key):
            cached = row["already_derived"] and all(
                (cache_dir / key).exists() for key in _derivative_keys(row["image_id"], spec)
            )
            if cached:
                reuse.append(row["image_id"])
                continue
            source = staging.local_file(row["local_path"], staging_dir)  # a remote entry: its staged copy
            if source != Path(row["local_path"]) and not source.exists():
                report.counts["awaiting_download"] += 1  # stays pending: the next raw_files fetches it again
                continue
            paths[row["image_id"]] = row["local_path"]
            yield row["image_id"], str(source)

    batch: list[DerivedImage] = []
    for result in derive_all(jobs(), cache_dir, spec, workers):
        batch.append(result)
        if result.ok:
            report.counts["processed"] += 1
            report.bytes += sum((cache_dir / key).stat().st_size for key in _derivative_keys(result.image_id, spec))
        else:
            report.counts["failed"] += 1
            report.add_failure(paths.get(result.image_id, result.image_id), result.error_kind, result.error_message)
        paths.pop(result.image_id, None)
        if len(batch) >= commit_every:
            catalog.record_derived(conn, batch)
            batch = []
            if progress:
                done = report.counts["processed"] + report.counts["failed"]
                progress(f"derived {done:,}/{total:,} images of shard {shard_key}")
    if batch:
        catalog.record_derived(conn, batch)
    if reuse:
        catalog.mark_processed(conn, reuse)
    report.counts["reused"] = len(reuse)
    located = places.locate_shard(conn, shard_key)  # GPS -> place; loads the geocoder only if needed
    report.counts.update(geocoded=located.located, placed=located.placed)
    report.seconds = time.perf_counter() - started
    return report


def _derivative_keys(image_id: str, spec: DerivativeSpec) -> tuple[str, str]:
    """Cache keys of the thumbnail (in the spec's format) and the preview of an image."""
    return thumbnail_key(image_id, spec.thumbnail_ext), preview_key(image_id)
