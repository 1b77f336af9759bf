"""A local folder: today's source. Its walk (symlink loops, undecodable names, mtime+size skip)
stays in ``assemblage_assets/images/scan.py``; this resource only says where the folder is."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from resources.image_source.base import ImageSource, SourceConfigError


class LocalFolderSource(ImageSource):
    """A directory tree; each first-level folder is a shard, the top-level files one more."""

    root: str = Field(description="Absolute path of the folder (IMAGES_DIR, or a path in IMAGE_SOURCES).")

    @property
    def is_local(self) -> bool:
        return True

    @property
    def uri(self) -> str:
        return self.root

    @property
    def path(self) -> Path:
        return Path(self.root)

    def preflight(self) -> None:
        if not self.path.is_dir():
            raise SourceConfigError(f"images directory does not exist: {self.root} (IMAGES_DIR / IMAGE_SOURCES)")
