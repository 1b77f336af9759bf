"""Environment-driven settings shared by the CLI, the Dagster resources and the tests.

Every knob has a default that works on a fresh clone: state lives under ``ASSEMBLAGE_HOME``
(``.assemblage/`` in the working directory) and the database is the embedded pgserver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_IMAGE_PIXELS = 120_000_000  # 120 MP: above any camera sensor, far below a bomb
DEFAULT_WATERMARK_TEXT = "assemblage"
# Source files considered at all (others are recorded as rejected); IMAGE_EXTENSIONS overrides.
DEFAULT_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tiff", ".tif", ".heic", ".heif", ".avif")


def env_str(name: str, default: str = "") -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in {"1", "true", "yes", "on"}


def assemblage_home() -> Path:
    return Path(env_str("ASSEMBLAGE_HOME", ".assemblage")).expanduser().resolve()


def database_url() -> str:
    """External DSN if configured (``DATABASE_URL``, or the older loader's ``SUPABASE_DB_URL``)."""
    return env_str("DATABASE_URL") or env_str("SUPABASE_DB_URL")


def images_dir() -> Path:
    return Path(env_str("IMAGES_DIR", str(assemblage_home() / "images"))).expanduser().resolve()


def image_extensions() -> tuple[str, ...]:
    """``IMAGE_EXTENSIONS`` (space- or comma-separated, e.g. ``.jpg .heic``; case and the leading
    dot optional), else ``DEFAULT_IMAGE_EXTENSIONS``. The content is still checked by magic bytes."""
    raw = env_str("IMAGE_EXTENSIONS")
    if not raw:
        return DEFAULT_IMAGE_EXTENSIONS
    items = [item.strip().lower() for item in raw.replace(",", " ").split()]
    return tuple(dict.fromkeys(item if item.startswith(".") else f".{item}" for item in items if item.strip(".")))


@dataclass(frozen=True)
class Paths:
    """Where each kind of state lives under ``ASSEMBLAGE_HOME``."""

    home: Path

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def derivative_cache(self) -> Path:
        return self.home / "derivatives"

    @property
    def object_store(self) -> Path:
        return self.home / "objects"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @classmethod
    def from_env(cls) -> Paths:
        return cls(assemblage_home())
