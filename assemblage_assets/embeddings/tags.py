"""Image tags: zero-shot CLIP tags against a vocabulary, and tags from a captioning model,
normalized the same way (lowercase, trimmed, stop words removed, deduplicated) and stored in
``image_tags`` with a confidence in [0, 1].

The vocabulary is ``TAG_VOCABULARY``: a comma-separated list, or a path to a file with one tag
per line; empty means the built-in list below, ``none`` disables zero-shot tagging.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import psycopg
from psycopg.rows import tuple_row

from assemblage_assets.core.tags import normalize_tag, normalize_tags

DEFAULT_VOCABULARY = (
    "car", "truck", "bus", "motorcycle", "bicycle", "train", "boat", "airplane", "street", "road",
    "bridge", "building", "house", "church", "city", "skyline", "night", "sunset", "sky", "clouds",
    "mountain", "beach", "sea", "lake", "river", "forest", "tree", "flower", "garden", "field", "snow",
    "desert", "person", "people", "crowd", "child", "portrait", "dog", "cat", "bird", "horse", "food",
    "drink", "table", "interior", "kitchen", "office", "shop", "market", "sign", "text", "document",
    "painting", "sculpture", "toy", "computer", "phone", "book", "sport", "concert", "wedding",
    "party", "animal", "landscape", "architecture", "vehicle", "orange", "red", "blue", "green",
    "yellow", "black and white",
)
PROMPT = "a photo of {}"
ZERO_SHOT_TOP_K = 5
ZERO_SHOT_MIN_CONFIDENCE = 0.05
CLIP_LOGIT_SCALE = 100.0  # CLIP's learned temperature, fixed at its cap in the released models


def load_vocabulary(spec: str) -> list[str]:
    spec = (spec or "").strip()
    if spec.lower() == "none":
        return []
    if not spec:
        raw: Iterable[str] = DEFAULT_VOCABULARY
    elif "," not in spec and Path(spec).expanduser().is_file():
        raw = Path(spec).expanduser().read_text().splitlines()
    else:
        raw = spec.split(",")
    return list(dict.fromkeys(t for t in (normalize_tag(r) for r in raw) if t))


def zero_shot(
    image_vectors: np.ndarray, vocab: Sequence[str], vocab_vectors: np.ndarray,
    *, top_k: int = ZERO_SHOT_TOP_K, min_confidence: float = ZERO_SHOT_MIN_CONFIDENCE,
) -> list[list[tuple[str, float]]]:
    """CLIP zero-shot classification: softmax over scaled cosine similarities to the prompts."""
    if len(vocab) == 0 or len(image_vectors) == 0:
        return [[] for _ in range(len(image_vectors))]
    logits = CLIP_LOGIT_SCALE * (np.asarray(image_vectors, np.float32) @ np.asarray(vocab_vectors, np.float32).T)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    result = []
    for row in probs:
        order = np.argsort(-row)[:top_k]
        result.append(normalize_tags((vocab[i], float(row[i])) for i in order if row[i] >= min_confidence))
    return result


def write_tags(conn: psycopg.Connection, model: str, tags: dict[str, list[tuple[str, float]]]) -> int:
    """Replace each image's tags from ``model`` (idempotent per image and model)."""
    ids = [image_id for image_id in tags]
    rows = [(image_id, tag, conf, model) for image_id, items in tags.items() for tag, conf in items]
    if not ids:
        return 0
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("DELETE FROM image_tags WHERE model = %s AND image_id = ANY(%s::uuid[])", (model, ids))
        if rows:
            with cur.copy("COPY image_tags (image_id, tag, confidence, model) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
    return len(rows)


def known_tags(conn: psycopg.Connection, image_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
    rows = conn.cursor(row_factory=tuple_row).execute(
        """SELECT image_id::text, array_agg(DISTINCT tag ORDER BY tag) FROM image_tags
           WHERE image_id = ANY(%s::uuid[]) GROUP BY image_id""",
        (list(image_ids),),
    ).fetchall()
    return {image_id: tuple(tags) for image_id, tags in rows}
