"""``local_clip``: sentence-transformers CLIP on this machine, by hub name or local path."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import numpy as np
from pydantic import PrivateAttr

from assemblage_assets.core import settings
from resources.embedding.base import EmbeddingResource
from resources.embedding.clip_encoder import (
    DEFAULT_CLIP_MODEL,
    TINY_MODEL_WARNING,
    ClipEncoder,
    clip_model_id,
    is_random_checkpoint,
)
from resources.embedding.types import EmbedItem, EmbedOutcome, ItemRejectedError, Usage


class LocalClipEmbedding(EmbeddingResource):
    """sentence-transformers CLIP on this machine: by hub name (``clip-ViT-L-14``) or local path."""

    clip_model: str = DEFAULT_CLIP_MODEL  # CLIP_MODEL
    device: str = ""  # CLIP_DEVICE; empty: CUDA when present, else CPU
    decode_workers: int = 0  # threads decoding images ahead of the model; 0: min(4, cores), all on CUDA
    # CLIP_BACKEND / CLIP_PRECISION (clip_backends.py); from the environment both default to auto.
    # Built directly, today's torch fp32 (tests, search of a recorded model pass what they need).
    clip_backend: str = "torch"
    clip_precision: str = "fp32"

    provider_name: ClassVar[str] = "local_clip"
    pool: ClassVar[str] = "gpu"
    kind: ClassVar[str] = "pytorch"
    zero_shot_tags: ClassVar[bool] = True

    @classmethod
    def from_env(cls, common: dict[str, Any], secret: Callable[[str], Any]) -> LocalClipEmbedding:
        return cls(
            clip_model=settings.env_str("CLIP_MODEL", DEFAULT_CLIP_MODEL),
            device=settings.env_str("CLIP_DEVICE"),
            clip_backend=settings.env_str("CLIP_BACKEND", "auto") or "auto",
            clip_precision=settings.env_str("CLIP_PRECISION", "auto") or "auto",
            max_calls_per_min=settings.env_int("MAX_EMBEDDING_CALLS_PER_MIN", 0),
            **common,
        )

    _encoder: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        encoder = self.load()
        if context.log:
            context.log.info(f"loaded CLIP {self.clip_model} ({encoder.dim}-d) on {encoder.device}, "
                             f"backend {encoder.backend_label} ({self.clip_backend}/{self.clip_precision} requested)")
            if is_random_checkpoint(self.clip_model):
                context.log.warning(TINY_MODEL_WARNING)

    def load(self) -> ClipEncoder:
        with self._lock:
            if self._encoder is None:
                self._encoder = ClipEncoder.load(
                    self.clip_model, device=self.device or None, batch_size=self.batch_size,
                    decode_workers=self.decode_workers, backend=self.clip_backend, precision=self.clip_precision,
                )
            return self._encoder

    @property
    def model_id(self) -> str:
        return clip_model_id(self.clip_model)

    @property
    def vector_backend(self) -> str | None:
        return self.load().backend_label

    @property
    def backend_detail(self) -> dict[str, Any]:
        return self.load().backend_detail

    def describe(self) -> str:
        return f"{self.provider_name} {self.model_id} ({self.vector_backend})"

    @property
    def source(self) -> str:
        path = Path(self.clip_model).expanduser()
        return str(path.resolve()) if path.exists() else self.clip_model

    @property
    def dim(self) -> int:
        return self.load().dim

    def embed_stream(self, items: Iterable[EmbedItem]) -> Iterator[list[EmbedOutcome]]:
        return self.load().embed_stream(items)

    def embed_images(self, items: Sequence[EmbedItem]) -> list[EmbedOutcome]:
        return [o for batch in self.embed_stream(items) for o in batch]

    def embed_image(self, item: EmbedItem) -> EmbedOutcome:
        (outcome,) = self.embed_images([item])
        if not outcome.ok:
            raise ItemRejectedError(outcome.error or "cannot embed", kind=outcome.error_kind)
        return outcome

    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, Usage | None]:
        return self.load().encode_texts(list(texts)), None
