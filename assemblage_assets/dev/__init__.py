"""Development helpers: the sample image tree and random-weight CLIP checkpoints (tests, demo, benchmarks)."""
