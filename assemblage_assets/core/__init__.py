"""Shared foundations: settings, the database, stage reports, batching and imaging helpers.

Imports nothing else of the project, so every other package may use it."""
