"""Where the source images are and how their derivatives are made."""


from pathlib import Path

import dagster as dg

from assemblage_assets.core import settings
from assemblage_assets.core.imaging import THUMBNAIL_BOX, THUMBNAIL_FORMAT, THUMBNAIL_FORMATS, DerivativeSpec
from resources import image_source
from resources.image_source import ImageSource


class ImageLibraryResource(dg.ConfigurableResource):
    """Source tree, derivative cache and the knobs of validation and derivation."""

    images_dir: str
    derivative_cache_dir: str
    max_image_pixels: int = settings.DEFAULT_MAX_IMAGE_PIXELS
    watermark_text: str = settings.DEFAULT_WATERMARK_TEXT
    watermark_image: str = ""
    derive_workers: int = 0  # 0: one per core
    thumbnail_size: int = THUMBNAIL_BOX  # THUMBNAIL_SIZE: pixels of the square box
    thumbnail_format: str = THUMBNAIL_FORMAT  # THUMBNAIL_FORMAT: webp, jpeg or png
    default_owner: str = ""  # DEFAULT_OWNER: owner of images from the folder (cost attribution)
    image_sources: str = ""  # IMAGE_SOURCES: comma-separated source URIs; empty: images_dir alone
    staging_dir: str = ""  # ASSEMBLAGE_HOME/staging: remote entries between download and publication
    staging_budget_mb: int = 2048  # SOURCE_STAGING_BUDGET_MB: all staged files together
    source_max_file_mb: int = 200  # SOURCE_MAX_FILE_MB: a remote entry above this is recorded, not fetched
    download_concurrency: int = 4  # SOURCE_DOWNLOAD_CONCURRENCY: parallel downloads from a remote source

    @classmethod
    def from_env(cls) -> "ImageLibraryResource":
        paths = settings.Paths.from_env()
        thumbnail_size = settings.env_int("THUMBNAIL_SIZE", THUMBNAIL_BOX)
        if thumbnail_size < 1:
            raise ValueError(f"THUMBNAIL_SIZE must be at least 1 (pixels of the square box), got {thumbnail_size}")
        thumbnail_format = settings.env_str("THUMBNAIL_FORMAT", THUMBNAIL_FORMAT).lower()
        if thumbnail_format not in THUMBNAIL_FORMATS:
            raise ValueError(f"THUMBNAIL_FORMAT must be one of {', '.join(THUMBNAIL_FORMATS)}, got {thumbnail_format!r}")
        return cls(
            images_dir=str(settings.images_dir()),
            derivative_cache_dir=str(paths.derivative_cache),
            max_image_pixels=settings.env_int("MAX_IMAGE_PIXELS", settings.DEFAULT_MAX_IMAGE_PIXELS),
            watermark_text=settings.env_str("WATERMARK_TEXT", settings.DEFAULT_WATERMARK_TEXT),
            watermark_image=settings.env_str("WATERMARK_IMAGE"),
            derive_workers=settings.env_int("DERIVE_WORKERS", 0),
            thumbnail_size=thumbnail_size,
            thumbnail_format=thumbnail_format,
            default_owner=settings.env_str("DEFAULT_OWNER"),
            image_sources=settings.env_str("IMAGE_SOURCES"),
            staging_dir=str(paths.home / "staging"),
            staging_budget_mb=settings.env_int("SOURCE_STAGING_BUDGET_MB", 2048),
            source_max_file_mb=settings.env_int("SOURCE_MAX_FILE_MB", 200),
            download_concurrency=settings.env_int("SOURCE_DOWNLOAD_CONCURRENCY", 4),
        )

    @property
    def root(self) -> Path:
        return Path(self.images_dir)

    @property
    def cache(self) -> Path:
        return Path(self.derivative_cache_dir)

    @property
    def staging(self) -> Path:
        return Path(self.staging_dir) if self.staging_dir else self.cache.parent / "staging"

    def sources(self) -> list[ImageSource]:
        """The configured sources (built now: their secrets are read from the environment when
        they connect, never held in this resource's config)."""
        return image_source.from_env(self.image_sources or self.images_dir)

    def derivative_spec(self) -> DerivativeSpec:
        return DerivativeSpec(
            thumbnail_box=self.thumbnail_size,
            thumbnail_format=self.thumbnail_format,
            watermark_text=self.watermark_text,
            watermark_image=self.watermark_image,
            max_pixels=self.max_image_pixels,
        )
