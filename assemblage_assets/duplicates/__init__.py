"""Near-duplicates across the whole catalogue: perceptual-hash candidates, CLIP confirmation,
persistent groups, and the skip mode that keeps near-duplicates from being published twice."""
