"""How a loaded CLIP runs: a backend (torch | onnx) and a precision (fp32 | bf16 | fp16 | int8).

``CLIP_BACKEND`` and ``CLIP_PRECISION`` choose; both default to ``auto`` (``clip_auto.py``
measures the candidates once per machine and model). A runner turns preprocessed features
(sentence-transformers' ``preprocess`` output: ``pixel_values`` or ``input_ids`` +
``attention_mask``) into L2-normalized float32 vectors, images and texts alike, so search
text vectors come from the same backend as the image vectors.

- ``torch-fp32``: the sentence-transformers model as loaded (what the stage always did).
- ``torch-bf16``: CPU autocast to bfloat16, offered only on CPUs with native bf16 (AVX-512
  BF16 / AMX); emulated bf16 is slower than fp32. ``torch-fp16``: autocast on CUDA.
- ``onnx-fp32`` / ``onnx-int8``: ONNX Runtime over the vision and text towers exported by
  ``clip_export.py`` (int8: dynamic quantization of the fp32 export).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resources.embedding.types import ProviderConfigError

BACKENDS = ("torch", "onnx")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# Which precisions each backend runs (fp16 only on CUDA, bf16 only with native CPU support).
SUPPORTED = {"torch": ("fp32", "bf16", "fp16"), "onnx": ("fp32", "int8")}
MIN_COSINE = 0.999  # a backend's vectors must stay this close to torch fp32 (per vector, minimum)


@dataclass(frozen=True)
class Backend:
    """One way to run the model; ``label`` (``onnx-int8``) is what each vector row records."""

    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}"

    @classmethod
    def parse(cls, label: str) -> Backend:
        backend, _, precision = label.partition("-")
        return cls(backend, precision)


def parse_preference(backend: str, precision: str) -> tuple[str, str]:
    """Validated ``(CLIP_BACKEND, CLIP_PRECISION)``, each possibly ``auto``."""
    backend = (backend or "auto").strip().lower()
    precision = (precision or "auto").strip().lower()
    if backend not in (*BACKENDS, "auto"):
        raise ProviderConfigError(f"CLIP_BACKEND must be torch, onnx or auto, got {backend!r}")
    if precision not in (*PRECISIONS, "auto"):
        raise ProviderConfigError(f"CLIP_PRECISION must be fp32, bf16, fp16, int8 or auto, got {precision!r}")
    if backend != "auto" and precision != "auto" and precision not in SUPPORTED[backend]:
        raise ProviderConfigError(
            f"CLIP_BACKEND={backend} does not run CLIP_PRECISION={precision} (it runs {', '.join(SUPPORTED[backend])})"
        )
    return backend, precision


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's own test: AVX-512 BF16 or AMX)."""
    import torch

    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def candidates(device: str, backend: str = "auto", precision: str = "auto") -> list[Backend]:
    """The backends worth trying on ``device`` under the given preferences, fp32 torch first."""
    backend, precision = parse_preference(backend, precision)
    cuda = device.startswith("cuda")
    found = [Backend("torch", "fp32")]
    found.append(Backend("torch", "fp16") if cuda else Backend("torch", "bf16"))
    if not cuda:  # onnxruntime here is the CPU build; on a GPU torch fp16 is the fast path
        found += [Backend("onnx", "fp32"), Backend("onnx", "int8")]
    wanted = [b for b in found if backend in ("auto", b.backend) and precision in ("auto", b.precision)]
    if backend == "auto" and precision == "auto" and not cuda and not cpu_has_native_bf16():
        wanted = [b for b in wanted if b.precision != "bf16"]  # emulated bf16: never the fastest
    if not wanted:
        where = "CUDA" if cuda else "CPU"
        raise ProviderConfigError(f"no CLIP backend runs {backend}/{precision} on {where} ({device})")
    return wanted


def normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class TorchRunner:
    """The sentence-transformers model itself, in fp32 or under autocast (bf16 CPU, fp16 CUDA)."""

    def __init__(self, model: Any, precision: str = "fp32") -> None:
        self.model, self.backend = model, Backend("torch", precision)

    def _autocast(self) -> Any:
        import torch

        if self.backend.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.backend.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.model.device.type, dtype=dtype)

    def __call__(self, features: dict[str, Any]) -> np.ndarray:
        import torch
        from sentence_transformers.util import batch_to_device

        with torch.inference_mode(), self._autocast():
            out = self.model(batch_to_device(features, self.model.device))["sentence_embedding"]
        out = torch.nn.functional.normalize(out.float(), p=2, dim=1)
        return out.cpu().numpy().astype(np.float32, copy=False)


class OnnxRunner:
    """ONNX Runtime sessions over the exported towers (``vision.onnx``, ``text.onnx``)."""

    def __init__(self, directory: Path, precision: str, *, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.directory, self.backend = Path(directory), Backend("onnx", precision)
        try:
            self.vision = ort.InferenceSession(str(self.directory / "vision.onnx"), options,
                                               providers=["CPUExecutionProvider"])
            self.text = ort.InferenceSession(str(self.directory / "text.onnx"), options,
                                             providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is a configuration problem
            raise ProviderConfigError(f"cannot load the ONNX CLIP in {self.directory}: {exc}") from exc

    def __call__(self, features: dict[str, Any]) -> np.ndarray:
        if "pixel_values" in features:
            pixels = np.ascontiguousarray(_numpy(features["pixel_values"]), dtype=np.float32)
            (out,) = self.vision.run(None, {"pixel_values": pixels})
        else:
            feed = {k: np.ascontiguousarray(_numpy(features[k]), dtype=np.int64) for k in ("input_ids", "attention_mask")}
            (out,) = self.text.run(None, feed)
        return normalized(out)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The worst per-vector cosine between two batches of normalized vectors."""
    return float(np.min(np.sum(normalized(a) * normalized(b), axis=1)))
