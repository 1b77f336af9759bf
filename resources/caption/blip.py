"""``blip``: captions from BLIP through ``transformers`` on this machine, by hub name or local path.

``BLIP_MODEL`` picks the checkpoint: ``Salesforce/blip-image-captioning-base`` by default, or
BLIP-2 (``BLIP2_MODEL``, default ``Salesforce/blip2-opt-2.7b``, fp16) when ``BLIP_MODEL`` is unset
and a CUDA GPU is present. The family is read from the checkpoint's config, so any BLIP or BLIP-2
captioning checkpoint works by name or path. A hub name is taken from the local cache when it is
there; otherwise the hub must be reachable, and without it loading fails at once with the reason.
Images are the clean, upright source or cached thumbnail (never the watermarked preview).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
from pydantic import PrivateAttr

from assemblage_assets.core import settings
from resources.caption.base import CaptionItem, CaptionOutcome, CaptionResource, clean_caption
from resources.embedding.clip_encoder import RANDOM_WEIGHTS_MARKER, hub_reachable
from resources.embedding.paid import clean_image
from resources.embedding.types import EmbeddingError, ProviderConfigError

DEFAULT_BLIP_MODEL = "Salesforce/blip-image-captioning-base"
DEFAULT_BLIP2_MODEL = "Salesforce/blip2-opt-2.7b"
TINY_BLIP_WARNING = (
    "USING A TINY BLIP MODEL WITH RANDOM WEIGHTS: ITS CAPTIONS CARRY NO MEANING. They are random "
    "words and caption search finds nothing real. Set BLIP_MODEL to a real model (a name such as "
    "Salesforce/blip-image-captioning-base with access to the model hub, or a local path)."
)
_FAMILIES = {"blip": ("BlipForConditionalGeneration", "BlipProcessor"),
             "blip-2": ("Blip2ForConditionalGeneration", "Blip2Processor")}


def is_random_checkpoint(path: str | Path) -> bool:
    return (Path(path).expanduser() / RANDOM_WEIGHTS_MARKER).is_file()


def blip_model_id(source: str) -> str:
    """``images.caption_model`` of a BLIP checkpoint: the hub name, or the directory's name."""
    path = Path(source).expanduser()
    return path.resolve().name if _is_path(source) or path.exists() else source


def _is_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class BlipLoaded:
    """A loaded BLIP/BLIP-2 model and processor on one device."""

    def __init__(self, model: Any, processor: Any, family: str, device: str, dtype: Any) -> None:
        self.model, self.processor, self.family, self.device, self.dtype = model, processor, family, device, dtype
        size = getattr(processor.image_processor, "size", None) or {}
        side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "height", None)
        self.input_side = int(side or 384)
        self.lock = threading.Lock()  # one generate at a time per model

    @classmethod
    def load(cls, source: str, device: str | None = None) -> BlipLoaded:
        if not source:
            raise ProviderConfigError("BLIP_MODEL is empty: set a model name or a local path")
        import torch
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        device = device or ("cuda" if cuda_available() else "cpu")
        path = Path(source).expanduser()
        local = path.exists() or _is_path(source)
        if local and not path.is_dir():
            raise ProviderConfigError(f"cannot load BLIP model {source!r}: no such directory")
        where = str(path.resolve()) if local else source
        try:
            config = transformers.AutoConfig.from_pretrained(where, local_files_only=True)
            cached = True
        except Exception as exc:  # noqa: BLE001 - not cached (hub name) or not a checkpoint (path)
            if local:
                raise ProviderConfigError(f"cannot load BLIP model from {path}: {type(exc).__name__}: {exc}") from exc
            if not hub_reachable():
                raise ProviderConfigError(
                    f"cannot load BLIP model {source!r}: no network access to the model hub and it is not in "
                    "the local cache; set BLIP_MODEL to a local path"
                ) from None
            cached = False
            try:
                config = transformers.AutoConfig.from_pretrained(where)
            except Exception as exc2:  # noqa: BLE001
                raise ProviderConfigError(f"cannot load BLIP model {source!r}: {type(exc2).__name__}: {exc2}") from exc2
        family = getattr(config, "model_type", "")
        if family not in _FAMILIES:
            raise ProviderConfigError(f"{source!r} is a {family or 'unknown'} checkpoint, not BLIP or BLIP-2 captioning")
        model_cls, processor_cls = (getattr(transformers, name) for name in _FAMILIES[family])
        # BLIP-2 (2.7B+ parameters) in fp16 on a GPU; BLIP base is small enough for fp32 anywhere.
        dtype = torch.float16 if device.startswith("cuda") and family == "blip-2" else torch.float32
        try:
            model = model_cls.from_pretrained(where, local_files_only=cached, dtype=dtype).to(device).eval()
            processor = processor_cls.from_pretrained(where, local_files_only=cached)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a configuration problem
            raise ProviderConfigError(f"cannot load BLIP model {source!r}: {type(exc).__name__}: {exc}") from exc
        return cls(model, processor, family, device, dtype)

    def generate(self, images: Sequence[Any], max_new_tokens: int, num_beams: int) -> list[str]:
        import torch

        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device, self.dtype)
        with self.lock, torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams)
        return [clean_caption(t) for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


class BlipCaptions(CaptionResource):
    """BLIP (or BLIP-2 on a GPU) captions on this machine."""

    blip_model: str = ""  # BLIP_MODEL; empty: BLIP2_MODEL on a CUDA GPU, else Salesforce/blip-image-captioning-base
    blip2_model: str = DEFAULT_BLIP2_MODEL  # BLIP2_MODEL
    device: str = ""  # CAPTION_DEVICE; empty: CUDA when present, else CPU
    max_new_tokens: int = 30  # CAPTION_MAX_TOKENS
    num_beams: int = 3  # CAPTION_NUM_BEAMS

    provider_name: ClassVar[str] = "blip"
    pool: ClassVar[str] = "gpu"
    kind: ClassVar[str] = "pytorch"

    _loaded: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_env(cls, common: dict[str, Any], secret: Callable[[str], Any]) -> BlipCaptions:
        return cls(
            blip_model=settings.env_str("BLIP_MODEL"),
            blip2_model=settings.env_str("BLIP2_MODEL", DEFAULT_BLIP2_MODEL),
            device=settings.env_str("CAPTION_DEVICE"),
            max_new_tokens=settings.env_int("CAPTION_MAX_TOKENS", 30),
            num_beams=settings.env_int("CAPTION_NUM_BEAMS", 3),
            **{**common, "max_calls_per_min": 0},
        )

    @property
    def source(self) -> str:
        """The checkpoint used: ``BLIP_MODEL``, else BLIP-2 when a GPU is present, else BLIP base."""
        if self.blip_model:
            return self.blip_model
        wants_gpu = not self.device or self.device.startswith("cuda")
        return self.blip2_model if wants_gpu and cuda_available() else DEFAULT_BLIP_MODEL

    @property
    def model_id(self) -> str:
        return blip_model_id(self.source)

    @property
    def random_weights(self) -> bool:
        return is_random_checkpoint(self.source)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        loaded = self.load()
        if context.log:
            context.log.info(f"loaded {loaded.family} {self.source} on {loaded.device}")
            if self.random_weights:
                context.log.warning(TINY_BLIP_WARNING)

    def load(self) -> BlipLoaded:
        with self._lock:
            if self._loaded is None:
                self._loaded = BlipLoaded.load(self.source, self.device or None)
            return self._loaded

    def caption_image(self, item: CaptionItem) -> CaptionOutcome:
        return self.caption_batch([item])[0]

    def caption_batch(self, items: Sequence[CaptionItem]) -> list[CaptionOutcome]:
        loaded = self.load()
        outcomes: dict[str, CaptionOutcome] = {}
        images, ready = [], []
        for item in items:
            try:
                images.append(clean_image(item, min_side=loaded.input_side))
                ready.append(item)
            except EmbeddingError as exc:  # undecodable, missing: this image only
                outcomes[item.image_id] = CaptionOutcome(item.image_id, error_kind=exc.kind, error=str(exc))
        if ready:
            try:
                texts = loaded.generate(images, self.max_new_tokens, self.num_beams)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: the batch fails, the shard goes on
                texts = [None] * len(ready)
                failure = f"{type(exc).__name__}: {exc}"
            for item, text in zip(ready, texts, strict=True):
                if text:
                    outcomes[item.image_id] = CaptionOutcome(item.image_id, caption=text)
                elif text is None:
                    outcomes[item.image_id] = CaptionOutcome(item.image_id, error_kind="caption-error", error=failure)
                else:
                    outcomes[item.image_id] = CaptionOutcome(
                        item.image_id, error_kind="empty-output", error="the model generated an empty caption"
                    )
        return [outcomes[item.image_id] for item in items]
