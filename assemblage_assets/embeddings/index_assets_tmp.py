"""``vector_index``: the finalize step of a bulk load, each model's HNSW index built once."""

import dagster as dg

from assemblage_assets.embeddings.assets import embeddings
from assemblage_assets.embeddings.index_build import finalize
from resources.database import PostgresResource


class VectorIndexConfig(dg.Config):
    model: str = ""  # only this model; empty: every model whose index is missing, deferred or invalid
    concurrently: bool = True  # False: plain CREATE INDEX (faster, blocks embedding writes meanwhile)


@dg.asset(
    deps=[embeddings],
    group_name="embeddings",
    kinds={"postgres"},
)
def vector_index(context: dg.AssetExecutionContext, config: VectorIndexConfig, database: PostgresResource) -> dg.MaterializeResult:
    """The HNSW cosine index of every model whose index was deferred (bulk-load mode,
    ``EMBED_DEFER_INDEX=1``), is missing or was left invalid by an interrupted build: built once
    with ``maintenance_work_mem`` sized to the graph and parallel workers, CONCURRENTLY so
    embedding runs can keep writing, then VACUUM ANALYZE. Models already indexed are only reported."""
    with database.connect() as conn:
        report = finalize(conn, config.model or None, concurrently=config.concurrently, log=context.log.info)
    metadata: dict[str, dg.MetadataValue] = {
        "built": dg.MetadataValue.int(len(report.built)),
        "models": dg.MetadataValue.json(report.as_dict()["models"]),
    }
    if report.vacuum_seconds is not None:
        metadata["vacuum_analyze_seconds"] = dg.MetadataValue.float(report.vacuum_seconds)
    if len(report.built) == 1:  # the usual case: one model, its figures as plottable numbers
        built = report.built[0]
        metadata |= {
            "model": dg.MetadataValue.text(built.model),
            "build_seconds": dg.MetadataValue.float(built.build_seconds or 0.0),
            "index_bytes": dg.MetadataValue.int(built.index_bytes or 0),
            "rows": dg.MetadataValue.int(built.rows),
            "m": dg.MetadataValue.int(built.m or 0),
            "ef_construction": dg.MetadataValue.int(built.ef_construction or 0),
            "maintenance_work_mem": dg.MetadataValue.text(built.maintenance_work_mem or ""),
            "parallel_workers": dg.MetadataValue.int(built.workers or 0),
        }
    for result in report.models:
        context.log.info(f"{result.model}: {result.action} ({result.index_name or 'no index'})")
    return dg.MaterializeResult(metadata=metadata)
