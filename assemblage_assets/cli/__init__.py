"""The ``assemblage`` command line: one module per group of commands, ``main`` assembles them."""

from assemblage_assets.cli.main import main

__all__ = ["main"]
