"""Pick and build the runner ``CLIP_BACKEND``/``CLIP_PRECISION`` ask for.

With one candidate it is built directly (an ONNX build is verified by ``clip_export``). With
several (``auto``), each is timed on a short sample batch and compared with torch fp32; the
fastest whose vectors stay within cosine ``MIN_COSINE`` wins. The measurement is cached next to
the builds (``auto-<machine>.json``, keyed by device, CPU model and thread count) so later loads
skip it; delete that file to measure again. The choice and its figures are logged and kept in
``choice`` so the stage can record them with the model (``embedding_models.backend_detail``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from resources.embedding import clip_export
from resources.embedding.clip_backends import (
    MIN_COSINE,
    Backend,
    OnnxRunner,
    TorchRunner,
    candidates,
    min_cosine,
)
from resources.embedding.types import ProviderConfigError

log = logging.getLogger(__name__)


def build_runner(model: Any, source: str, backend: Backend, size: int) -> Any:
    if backend.backend == "torch":
        return TorchRunner(model, backend.precision)
    return OnnxRunner(clip_export.ensure_onnx(model, source, backend.precision, size), backend.precision)


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return hashlib.sha256(f"{cpu}|{torch.get_num_threads()}|{os.cpu_count()}".encode()).hexdigest()[:12]


def _time(runner: Any, features: dict[str, Any], repeats: int) -> float:
    """Seconds per pass, the best of ``repeats`` after two warm-up passes: torch's first passes
    after loading (allocator, oneDNN primitive cache) run several times slower than later ones,
    and one warm-up made torch fp32 look 4x slower than it is."""
    for _ in range(2):
        runner(features)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        runner(features)
        best = min(best, time.perf_counter() - started)
    return best


def measure(model: Any, source: str, options: list[Backend], size: int, *, repeats: int = 3) -> dict[str, Any]:
    """Images/s and worst cosine to torch fp32 of each option on the sample batch."""
    images, texts = clip_export.sample_features(model, size)
    reference = TorchRunner(model)
    ref_images, ref_texts = reference(images), reference(texts)
    rows = []
    for option in options:
        try:
            runner = build_runner(model, source, option, size)
            seconds = _time(runner, images, repeats)
            cosine = min(min_cosine(runner(images), ref_images), min_cosine(runner(texts), ref_texts))
        except ProviderConfigError as exc:  # e.g. a failed verification: not a candidate
            rows.append({"backend": option.label, "error": str(exc)})
            continue
        rows.append({"backend": option.label, "images_per_s": round(len(ref_images) / seconds, 2),
                     "cosine": round(cosine, 6)})
    usable = [r for r in rows if "error" not in r and r["cosine"] >= MIN_COSINE]
    if not usable:
        raise ProviderConfigError(f"no CLIP backend is usable here: {rows}")
    best = max(usable, key=lambda r: r["images_per_s"])
    return {"choice": best["backend"], "measured": rows, "measured_at": time.time(), "sample_images": len(ref_images)}


def choose(model: Any, source: str, device: str, backend: str = "auto", precision: str = "auto",
           size: int = 224) -> tuple[Any, dict[str, Any]]:
    """(runner, what was chosen and why) for the preferences on ``device``."""
    options = candidates(device, backend, precision)
    if len(options) == 1:
        runner = build_runner(model, source, options[0], size)
        detail: dict[str, Any] = {"choice": options[0].label, "requested": f"{backend}/{precision}"}
        if options[0].backend == "onnx":
            detail["build"] = clip_export.build_info(runner.directory)
        return runner, detail
    home = clip_export.cache_root() / clip_export.model_key(source)
    cached = home / f"auto-{device.replace(':', '')}-{_machine()}-{backend}-{precision}.json"
    detail = _read(cached)
    labels = [o.label for o in options]
    if detail is None or detail.get("choice") not in labels:
        log.info("measuring CLIP backends %s on %s (once per machine and model)", ", ".join(labels), device)
        detail = measure(model, source, options, size)
        _write_atomic(cached, detail)
    detail["requested"] = f"{backend}/{precision}"
    chosen = Backend.parse(detail["choice"])
    log.info("CLIP backend %s chosen (%s)", chosen.label, ", ".join(
        f"{r['backend']} {r.get('images_per_s', '-')} img/s cos {r.get('cosine', '-')}" for r in detail["measured"]))
    return build_runner(model, source, chosen, size), detail


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".auto-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
