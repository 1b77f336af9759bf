"""Dagster metadata for stage reports: counts, throughput, failures and a visual sample."""


from typing import Any

import dagster as dg

from assemblage_assets.ingest import StageReport


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def failures_table(report: StageReport) -> str:
    if not report.failures:
        return "No failures."
    rows = ["| file | kind | reason |", "|---|---|---|"]
    rows += [f"| `{_md_escape(p)}` | {k} | {_md_escape(m)} |" for p, k, m in report.failures]
    return "\n".join(rows)


def palette_table(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return "No derived images yet."
    rows = ["| image | size | thumbnail | palette |", "|---|---|---|---|"]
    for s in samples:
        swatches = " ".join(
            f"`{c['hex']}` {c['share']:.0%}" for c in (s["palette"] or [])
        )
        rows.append(f"| `{s['id'][:8]}` {s['format']} | {s['width']}×{s['height']} | `{s['thumbnail_key']}` | {swatches} |")
    return "\n".join(rows)


def stage_metadata(report: StageReport, rate_key: str) -> dict[str, Any]:
    meta: dict[str, Any] = {name: dg.MetadataValue.int(n) for name, n in sorted(report.counts.items())}
    meta["bytes"] = dg.MetadataValue.int(report.bytes)
    meta["seconds"] = dg.MetadataValue.float(round(report.seconds, 3))
    meta[f"{rate_key}_per_second"] = dg.MetadataValue.float(report.per_second(rate_key))
    meta["failures"] = dg.MetadataValue.md(failures_table(report))
    return meta
