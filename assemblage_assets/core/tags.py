"""How a tag is spelled, wherever it comes from (zero-shot CLIP or a captioning model):
lowercase, trimmed, stop words removed, deduplicated, confidence in [0, 1]."""

from __future__ import annotations

import re
from collections.abc import Iterable

STOP_WORDS = frozenset(
    "a an the of and or in on at to for with by from is are was be this that these those it its "
    "photo picture image".split()
)
_NON_WORD = re.compile(r"[^\w\s&'-]+", re.UNICODE)


def normalize_tag(tag: str) -> str:
    """``"  The Orange Car! "`` -> ``"orange car"``; empty when nothing meaningful is left."""
    words = _NON_WORD.sub(" ", tag.lower()).split()
    return " ".join(w.strip("'-") for w in words if w not in STOP_WORDS and w.strip("'-"))


def normalize_tags(tags: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Normalized, deduplicated (highest confidence wins), confidence clamped to [0, 1]."""
    best: dict[str, float] = {}
    for raw, confidence in tags:
        tag = normalize_tag(str(raw))
        if tag:
            best[tag] = max(best.get(tag, 0.0), min(1.0, max(0.0, float(confidence))))
    return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
