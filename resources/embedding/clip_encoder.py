"""Local CLIP through sentence-transformers: loading by name or path, decoding images for it,
and a pipelined encoder where decoding and preprocessing overlap inference.

``load_clip`` is the one way a CLIP model is loaded (the ``local_clip`` provider, the search
CLI, the tests with their tiny checkpoint, the demo and the benchmarks all use it). A model
that cannot be loaded is a ``ProviderConfigError`` with the reason; nothing substitutes for it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from assemblage_assets.core.imaging import ORIENTATION_FIX, orientation, to_display_mode
from resources.embedding.clip_pixels import PixelPreprocess
from resources.embedding.types import EmbedItem, EmbedOutcome, ProviderConfigError

log = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "clip-ViT-L-14"  # 768-d, the batch-ingest design's choice
# Written by dev.tiny_clip into every checkpoint with random weights; loading one warns loudly.
RANDOM_WEIGHTS_MARKER = "ASSEMBLAGE_RANDOM_WEIGHTS"
TINY_MODEL_WARNING = (
    "USING A TINY CLIP MODEL WITH RANDOM WEIGHTS: ITS VECTORS CARRY NO MEANING. Search results, "
    "tags and similarities are arbitrary. Set CLIP_MODEL to a real model (a name such as "
    "clip-ViT-L-14 with access to the model hub, or a local path) for real embeddings."
)
HUB_ORGANIZATION = "sentence-transformers"
_quiet_lock = threading.Lock()
_cache_lock = threading.Lock()
_MODELS: dict[tuple[str, str], Any] = {}
_RUNNERS: dict[tuple[str, str, str, str], tuple[Any, dict[str, Any]]] = {}


def clip_model_id(source: str) -> str:
    """The model id stored with the vectors: the hub name, or the directory name of a path."""
    path = Path(source).expanduser()
    if _looks_like_path(source) or path.exists():
        return path.resolve().name
    return source.rstrip("/").split("/")[-1] if source.startswith(f"{HUB_ORGANIZATION}/") else source


def is_random_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint with random weights (built by ``dev.tiny_clip``)."""
    return (Path(path) / RANDOM_WEIGHTS_MARKER).is_file()


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else is meant as a directory.
    return source.startswith((".", "/", "~")) or source.count("/") > 1


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the model hub (``HF_ENDPOINT``); False offline, on DNS failure or timeout."""
    if _offline():
        return False
    url = urlparse(_hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _quiet_hf() -> None:
    """Progress bars and the torchvision fallback notice are noise in Dagster logs."""
    with _quiet_lock:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        except ImportError:  # pragma: no cover - older hub client
            pass


def load_clip(source: str, device: str | None = None) -> Any:
    """A ``SentenceTransformer`` CLIP from a local directory or a hub name (``clip-ViT-L-14``).

    A hub name is taken from the local cache when it is there; otherwise the hub must be
    reachable. Without it this fails fast with the reason, instead of the client's minute of
    retries.
    """
    if not source:
        raise ProviderConfigError("CLIP_MODEL is empty: set a model name (clip-ViT-L-14) or a local path")
    _quiet_hf()
    from sentence_transformers import SentenceTransformer

    device = device or None  # None: CUDA when present, else CPU (sentence-transformers decides)
    path = Path(source).expanduser()
    if path.exists() or _looks_like_path(source):
        if not path.is_dir():
            raise ProviderConfigError(f"cannot load CLIP model {source!r}: no such directory")
        try:
            return SentenceTransformer(str(path.resolve()), device=device, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a configuration problem
            raise ProviderConfigError(f"cannot load CLIP model from {path}: {type(exc).__name__}: {exc}") from exc
    try:
        return SentenceTransformer(source, device=device, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached (or a broken cache entry): try the hub below
        pass
    if not hub_reachable():
        raise ProviderConfigError(
            f"cannot load CLIP model {source!r}: no network access to the model hub "
            f"({_hub_endpoint()}{', HF_HUB_OFFLINE is set' if _offline() else ''}) and it is not in the "
            "local cache; set CLIP_MODEL to a local path"
        )
    try:
        return SentenceTransformer(source, device=device)
    except Exception as exc:  # noqa: BLE001
        raise ProviderConfigError(f"cannot load CLIP model {source!r}: {type(exc).__name__}: {exc}") from exc


def input_size(model: Any) -> int:
    """Shortest edge the model's image processor resizes to (224 for the released CLIPs)."""
    processor = getattr(model[0], "processor", None)
    image_processor = getattr(processor, "image_processor", None)
    for attr in ("crop_size", "size"):
        value = getattr(image_processor, attr, None)
        if isinstance(value, dict):
            value = value.get("shortest_edge") or value.get("height")
        else:
            value = getattr(value, "shortest_edge", None) or getattr(value, "height", None)
        if value:
            return int(value)
    return 224


def decode_for_clip(path: str, min_side: int = 224, max_pixels: int = 120_000_000) -> Image.Image:
    """Upright RGB image whose shortest edge is ``min_side`` (never upscaled), decoded cheaply:
    JPEG in the DCT domain at the smallest scale still at least ``min_side``."""
    # The same open and orientation decisions as the derivatives (core.imaging.decode_upright).
    from assemblage_assets.core.imaging import load_oriented, open_image

    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_image(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            turn = orientation(img)
            if img.format in ("JPEG", "MPO"):
                scale = min_side / min(img.size)
                if scale < 1:
                    img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
            turn = load_oriented(img, turn)  # TIFF: what Pillow's decoder left to do
            rgb = to_display_mode(img)
    if rgb.mode == "RGBA":
        background = Image.new("RGBA", rgb.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(background, rgb)
    rgb = rgb.convert("RGB")
    scale = min_side / min(rgb.size)
    if scale < 1:
        size = (max(min_side, round(rgb.width * scale)), max(min_side, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    fix = ORIENTATION_FIX.get(turn)
    return rgb.transpose(fix) if fix is not None else rgb


def _source_paths(item: EmbedItem) -> list[str]:
    # The source, then the clean thumbnail at whatever size it has. Never the preview: its tiled
    # watermark would end up in the vector.
    return [p for p in (item.path, item.thumbnail_path) if p]


@dataclass
class _Prepared:
    items: list[EmbedItem]
    ok: list[EmbedItem]
    failed: list[EmbedOutcome]
    features: dict[str, Any] | None


class ClipEncoder:
    """A loaded CLIP plus the batched, pipelined image path and the text path."""

    def __init__(self, model: Any, *, batch_size: int = 32, decode_workers: int = 0, runner: Any = None,
                 backend_detail: dict[str, Any] | None = None) -> None:
        from resources.embedding.clip_backends import TorchRunner

        self.model = model
        self.batch_size = max(1, batch_size)
        # On a GPU, decoding is what the device would wait on: every core decodes.
        cuda = str(getattr(model, "device", "cpu")).startswith("cuda")
        cores = os.cpu_count() or 1
        self.decode_workers = decode_workers or (cores if cuda else min(4, cores))
        self.min_side = input_size(model)
        dim = model.get_embedding_dimension()
        if not dim:
            raise ProviderConfigError("the CLIP model does not report its embedding dimension")
        self.dim = int(dim)
        self.runner = runner if runner is not None else TorchRunner(model)
        self._pixels = PixelPreprocess.for_model(model, self.min_side)
        self.backend_detail = backend_detail or {"choice": self.runner.backend.label}

    @classmethod
    def load(cls, source: str, *, device: str | None = None, batch_size: int = 32, decode_workers: int = 0,
             backend: str = "torch", precision: str = "fp32") -> ClipEncoder:
        """Load once per process: the CLI runs one in-process Dagster run per shard, and each
        would otherwise load the same weights again (or measure the backends again)."""
        from resources.embedding.clip_auto import choose

        key = (str(Path(source).expanduser().resolve()) if Path(source).expanduser().exists() else source, device or "")
        with _cache_lock:
            model = _MODELS.get(key)
            if model is None:
                model = _MODELS[key] = load_clip(source, device)
            runner_key = (*key, backend, precision)
            if runner_key not in _RUNNERS:
                _RUNNERS[runner_key] = choose(model, key[0], str(model.device), backend, precision, input_size(model))
            runner, detail = _RUNNERS[runner_key]
        return cls(model, batch_size=batch_size, decode_workers=decode_workers, runner=runner, backend_detail=detail)

    @property
    def device(self) -> str:
        return str(self.model.device)

    @property
    def backend_label(self) -> str:
        """``torch-fp32``, ``onnx-int8``, ...: recorded on every vector row this encoder writes."""
        return self.runner.backend.label

    # ---------------------------------------------------------------- model steps

    def preprocess(self, inputs: Sequence[Image.Image | str]) -> dict[str, Any]:
        """Model features for images or texts; images decoded at the input size take the
        batched fast path (``clip_pixels``), anything else the model's own processor."""
        inputs = list(inputs)
        if self._pixels is not None and inputs and all(isinstance(x, Image.Image) for x in inputs):
            fast = self._pixels(inputs)  # type: ignore[arg-type]
            if fast is not None:
                return fast
        return self.model.preprocess(inputs)

    def forward(self, features: dict[str, Any]) -> np.ndarray:
        """Normalized float32 vectors for preprocessed features, through the chosen backend."""
        return self.runner(features)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        vectors = [self.forward(self.preprocess(images[i : i + self.batch_size])) for i in range(0, len(images), self.batch_size)]
        return np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        vectors = [self.forward(self.preprocess(texts[i : i + self.batch_size])) for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32)

    # ---------------------------------------------------------------- pipelined image path

    def _decode(self, item: EmbedItem) -> Image.Image | EmbedOutcome:
        """The cached thumbnail when it is at least the model's input size (a ~4 ms WebP decode
        instead of ~40 ms for a 12 MP JPEG, and no watermark), else the source, else the smaller
        thumbnail. Never the watermarked preview."""
        if item.thumbnail_path:
            try:
                with Image.open(item.thumbnail_path) as probe:
                    big_enough = min(probe.size) >= self.min_side
                if big_enough:
                    return decode_for_clip(item.thumbnail_path, self.min_side)
            except (OSError, SyntaxError, EOFError, ValueError):
                pass  # missing or damaged in the cache: the source decides
        last: Exception | None = None
        for path in _source_paths(item):
            try:
                return decode_for_clip(path, self.min_side)
            except FileNotFoundError as exc:
                last = exc
            except Image.DecompressionBombError as exc:
                return EmbedOutcome(item.image_id, error_kind="bomb", error=f"decompression bomb: {exc}")
            except (OSError, SyntaxError, EOFError, ValueError, TypeError, IndexError) as exc:
                return EmbedOutcome(item.image_id, error_kind="corrupt", error=f"cannot decode image: {type(exc).__name__}: {exc}")
        return EmbedOutcome(item.image_id, error_kind="missing-file", error=f"neither the source nor the thumbnail can be read: {last}")

    def _prepare(self, batch: list[EmbedItem], decode_pool: ThreadPoolExecutor) -> _Prepared:
        decoded = list(decode_pool.map(self._decode, batch))
        ok = [item for item, d in zip(batch, decoded, strict=True) if isinstance(d, Image.Image)]
        failed = [d for d in decoded if isinstance(d, EmbedOutcome)]
        images = [d for d in decoded if isinstance(d, Image.Image)]
        return _Prepared(batch, ok, failed, self.preprocess(images) if images else None)

    def embed_stream(
        self, items: Iterable[EmbedItem], *, prefetch: int = 2, on_batch: Callable[[int], None] | None = None
    ) -> Iterator[list[EmbedOutcome]]:
        """One list of outcomes per batch, in order. While the model runs batch *n*, batches
        *n+1..n+prefetch* are decoded (thread pool: Pillow releases the GIL) and preprocessed."""
        iterator = iter(items)

        def next_batch() -> list[EmbedItem]:
            batch = []
            for item in iterator:
                batch.append(item)
                if len(batch) >= self.batch_size:
                    break
            return batch

        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="clip-decode") as decode_pool, \
                ThreadPoolExecutor(1, thread_name_prefix="clip-prepare") as prepare_pool:
            queue: deque[Future[_Prepared]] = deque()

            def fill() -> None:
                while len(queue) < prefetch + 1:
                    batch = next_batch()
                    if not batch:
                        return
                    queue.append(prepare_pool.submit(self._prepare, batch, decode_pool))

            fill()
            while queue:
                prepared = queue.popleft().result()
                fill()
                outcomes = list(prepared.failed)
                if prepared.features is not None:
                    vectors = self.forward(prepared.features)
                    outcomes.extend(EmbedOutcome(item.image_id, vector=v) for item, v in zip(prepared.ok, vectors, strict=True))
                if on_batch:
                    on_batch(len(prepared.items))
                yield outcomes
