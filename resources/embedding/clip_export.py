"""ONNX builds of a CLIP: both towers exported with ``torch.onnx``, optionally quantized to int8
(``onnxruntime.quantization.quantize_dynamic``), verified against torch fp32, cached.

Built once per (model, precision) under ``ASSEMBLAGE_HOME/models/clip-backends/<model key>/``:
a build writes into a temporary directory next to its destination and renames it into place
(readers never see half a model), under a file lock (a second process waits, then reuses the
build). Before the rename, the build's vectors for a fixed sample batch of images and texts
must be within cosine ``MIN_COSINE`` of torch fp32, or the build fails with the figure and
nothing is cached; an int8 build whose images pass but whose texts do not keeps the fp32
text tower (recorded as ``text_precision`` in ``build.json``). The key covers the checkpoint's config and weight files (size, mtime), so
a replaced checkpoint builds afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from assemblage_assets.core import settings
from resources.embedding.clip_backends import MIN_COSINE, OnnxRunner, TorchRunner, min_cosine
from resources.embedding.types import ProviderConfigError

log = logging.getLogger(__name__)

SAMPLE_TEXTS = (
    "a photo of a dog", "a red car parked on a narrow street at night", "mountains", "two people",
    "a bowl of fruit on a wooden kitchen table next to the window", "snow", "a city skyline at dusk", "text",
)


class BackendVerificationError(ProviderConfigError):
    """A build whose vectors drift from torch fp32 beyond ``MIN_COSINE``; ``figures`` has the
    worst image and text cosines."""

    def __init__(self, message: str, figures: dict[str, float]) -> None:
        super().__init__(message)
        self.figures = figures


def cache_root() -> Path:
    return settings.assemblage_home() / "models" / "clip-backends"


def model_key(source: str) -> str:
    """A directory name for the checkpoint: its id plus a hash of its files' identity."""
    path = Path(source).expanduser()
    digest = hashlib.sha256(source.encode())
    if path.is_dir():
        path = path.resolve()
        digest = hashlib.sha256(str(path).encode())
        for f in sorted(path.rglob("*")):
            if f.is_file() and (f.suffix in {".json", ".safetensors", ".bin"}):
                st = f.stat()
                digest.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name or source)[:60]
    return f"{name}-{digest.hexdigest()[:12]}"


def sample_images(size: int, count: int = 8, seed: int = 1234) -> list[Image.Image]:
    """Deterministic photo-like images (gradients, blocks and noise) for verification."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
    images = []
    for _ in range(count):
        base = rng.uniform(0, 255, 3)
        tilt = rng.uniform(-120, 120, (2, 3))
        pixels = base + xs[..., None] * tilt[0] + ys[..., None] * tilt[1]
        y0, x0 = rng.integers(0, size // 2, 2)
        pixels[y0 : y0 + size // 3, x0 : x0 + size // 3] = rng.uniform(0, 255, 3)
        pixels += rng.normal(0, 12, pixels.shape)
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
    return images


def sample_features(model: Any, size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return model.preprocess(sample_images(size)), model.preprocess(list(SAMPLE_TEXTS))


def verify(runner: Any, reference: Any, model: Any, size: int, *, threshold: float = MIN_COSINE) -> dict[str, float]:
    """Worst cosine to ``reference`` (torch fp32) over the sample images and texts; raises
    ``BackendVerificationError`` with the figures when either is below ``threshold``."""
    images, texts = sample_features(model, size)
    figures = {"image_cosine": min_cosine(runner(images), reference(images)),
               "text_cosine": min_cosine(runner(texts), reference(texts))}
    worst = min(figures.values())
    if worst < threshold:
        raise BackendVerificationError(
            f"{runner.backend.label} vectors drift from torch fp32: worst cosine {worst:.6f} "
            f"(images {figures['image_cosine']:.6f}, texts {figures['text_cosine']:.6f}) < {threshold}; "
            "not cached, use another CLIP_BACKEND/CLIP_PRECISION", figures,
        )
    return figures


def _towers(clip: Any) -> tuple[Any, Any]:
    """Modules for the image embeddings and the text embeddings, each including its projection
    (``get_image_features`` / ``get_text_features``); torch is imported only when exporting."""
    import torch

    def features(out: Any) -> Any:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    class Vision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values: Any) -> Any:
            return features(self.clip.get_image_features(pixel_values=pixel_values))

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return features(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    return Vision().eval(), Text().eval()


def export_towers(model: Any, size: int, dest: Path) -> None:
    """``vision.onnx`` and ``text.onnx`` in ``dest``, with dynamic batch (and sequence) axes.

    The TorchScript exporter (``dynamo=False``): on these towers it takes seconds where the
    dynamo exporter takes minutes, and the verification below checks its output either way.
    """
    import torch

    vision, text = _towers(model[0].model.eval())
    images, texts = sample_features(model, size)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            vision, (images["pixel_values"].cpu(),), str(dest / "vision.onnx"), dynamo=False,
            input_names=["pixel_values"], output_names=["embeds"],
            dynamic_axes={"pixel_values": {0: "batch"}, "embeds": {0: "batch"}},
        )
        torch.onnx.export(
            text, (texts["input_ids"].cpu(), texts["attention_mask"].cpu()), str(dest / "text.onnx"),
            dynamo=False, input_names=["input_ids", "attention_mask"], output_names=["embeds"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "embeds": {0: "batch"}},
        )


# What an int8 build quantizes; part of the build's identity (``build.json`` ``recipe``), so a
# cache built with another recipe is rebuilt. Only the MatMuls: ONNX Runtime's ConvInteger (the
# patch embedding) ran slower than its fp32 Conv and took 17% of the int8 vision tower's time,
# and an int8 Gather (the token embedding) costs the text tower accuracy for no speed.
QUANT_RECIPE = "dynamic-int8-matmul-v2"


def quantize_towers(source: Path, dest: Path) -> None:
    """Dynamic int8 quantization (weights int8, activations quantized per batch) of both
    towers' MatMuls."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # its pre-processing hint
    for name in ("vision.onnx", "text.onnx"):
        quantize_dynamic(str(source / name), str(dest / name), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"])


def _current(dest: Path, precision: str) -> bool:
    """Whether ``dest`` holds a finished build of today's recipe."""
    try:
        info = build_info(dest)
    except (OSError, ValueError):
        return False
    return precision != "int8" or info.get("recipe") == QUANT_RECIPE


def ensure_onnx(model: Any, source: str, precision: str, size: int, *, threshold: float = MIN_COSINE) -> Path:
    """The cached, verified ONNX build of ``source`` at ``precision`` (fp32 | int8); built if absent."""
    from filelock import FileLock

    if precision not in ("fp32", "int8"):
        raise ProviderConfigError(f"ONNX builds are fp32 or int8, not {precision}")
    home = cache_root() / model_key(source)
    dest = home / f"onnx-{precision}"
    if _current(dest, precision):
        return dest
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home / f".onnx-{precision}.lock")):
        if _current(dest, precision):  # built by the process we waited for
            return dest
        fp32 = ensure_onnx(model, source, "fp32", size, threshold=threshold) if precision == "int8" else None
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{precision}-", dir=home))
        try:
            if fp32 is None:
                export_towers(model, size, tmp)
            else:
                quantize_towers(fp32, tmp)
            text_precision = precision
            try:
                figures = verify(OnnxRunner(tmp, precision), TorchRunner(model), model, size, threshold=threshold)
            except BackendVerificationError as exc:
                if fp32 is None or exc.figures["image_cosine"] < threshold:
                    raise
                # int8 images pass but the text tower does not: texts (search, tag prompts) are a
                # small share of the work, so the build keeps the fp32 text tower, says so and
                # verifies again.
                log.warning("%s; keeping the fp32 text tower", exc)
                shutil.copy(fp32 / "text.onnx", tmp / "text.onnx")
                text_precision = "fp32"
                figures = verify(OnnxRunner(tmp, precision), TorchRunner(model), model, size, threshold=threshold)
                figures["text_cosine_int8"] = exc.figures["text_cosine"]
            meta = {"source": source, "precision": precision, "text_precision": text_precision, **figures,
                    "recipe": QUANT_RECIPE if precision == "int8" else "export",
                    "threshold": threshold,
                    "build_seconds": round(time.perf_counter() - started, 2), "built_at": time.time(),
                    "onnxruntime": _version("onnxruntime"), "torch": _version("torch")}
            (tmp / "build.json").write_text(json.dumps(meta, indent=2))
            shutil.rmtree(dest, ignore_errors=True)  # a partial leftover, or an older recipe
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("built ONNX %s CLIP for %s in %.1fs (cosine to fp32 %.6f)", precision, source,
             meta["build_seconds"], min(meta["image_cosine"], meta["text_cosine"]))
    return dest


def build_info(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / "build.json").read_text())


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
