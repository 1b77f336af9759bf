"""Embeddings area: vectors per image, the retry queue, the paid-call log and rate limit,
tags, the vector indexes and search."""
