"""Schedules: trickle backfill of vehicle images and the embedding retry queue."""
