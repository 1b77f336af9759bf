"""Dagster metadata of a stage report (counts, throughput, failures) and small Markdown tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg

from assemblage_assets.core.reports import StageReport


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_escape(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def failures_table(report: StageReport) -> str:
    if not report.failures:
        return "No failures."
    return md_table(("file", "kind", "reason"), [(f"`{p}`", k, m) for p, k, m in report.failures])


def stage_metadata(report: StageReport, rate_key: str) -> dict[str, Any]:
    meta: dict[str, Any] = {name: dg.MetadataValue.int(n) for name, n in sorted(report.counts.items())}
    meta["bytes"] = dg.MetadataValue.int(report.bytes)
    meta["seconds"] = dg.MetadataValue.float(round(report.seconds, 3))
    meta[f"{rate_key}_per_second"] = dg.MetadataValue.float(report.per_second(rate_key))
    meta["failures"] = dg.MetadataValue.md(failures_table(report))
    return meta
