"""What every random-weight checkpoint the tests and the demo build has in common: weights drawn
from a fixed seed without disturbing the caller's random state, and a directory that appears
whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def seeded(build: Callable[[], T], seed: int) -> T:
    """``build()`` (a model constructor) with torch seeded to ``seed``; the global RNG state is
    restored afterwards, so building a checkpoint never changes a caller's random numbers."""
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def write_atomically(dest: Path, write: Callable[[Path], None]) -> Path:
    """``write(staging)`` fills a temporary directory next to ``dest``, which is then renamed
    into place (replacing an older build); a failed write leaves nothing behind."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        write(staging)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
