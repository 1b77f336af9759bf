"""Vehicles area: the trickle backfill of listing images from URLs into the object store."""
