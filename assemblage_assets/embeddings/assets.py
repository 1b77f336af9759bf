"""``embeddings`` (the fourth stage of every directory shard, a vector per processed image, with
its two checks) and ``vector_index`` (the finalize step of a bulk load)."""

import dagster as dg
import psycopg

from assemblage_assets.core import settings
from assemblage_assets.core.metadata import stage_metadata
from assemblage_assets.embeddings import retry_queue, vectors
from assemblage_assets.embeddings.candidates import count_candidates
from assemblage_assets.embeddings.embed import embed_shard
from assemblage_assets.embeddings.index_build import finalize
from assemblage_assets.embeddings.usage_log import run_cost
from assemblage_assets.partitions import image_shards_partitions_def
from assemblage_assets.platform.celery_queues import gpu_op_tags
from resources.database import PostgresResource
from resources.embedding import EmbeddingResource, provider_class
from resources.embedding.types import ProviderConfigError
from resources.image_library import ImageLibraryResource


class EmbeddingsConfig(dg.Config):
    limit: int = 0  # images per run at most; 0: EMBED_LIMIT, else all


def _check_results(conn: psycopg.Connection, shard: str, embedding: EmbeddingResource) -> list[dg.AssetCheckResult]:
    model = embedding.model_id
    missing = count_candidates(conn, shard, model)
    retry_pending, errored = retry_queue.shard_queue_counts(conn, shard, model)
    stored, mismatched = vectors.shard_vector_dims(conn, shard, model, embedding.dim)
    return [
        dg.AssetCheckResult(
            check_name="embedding_count",
            passed=missing == 0 and errored == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "vectors": stored, "missing": missing, "retry_pending": retry_pending, "errored": errored,
                "model": model,
            },
        ),
        dg.AssetCheckResult(
            check_name="vector_dim",
            passed=mismatched == 0 and (not embedding.expected_vector_dim or embedding.dim == embedding.expected_vector_dim),
            metadata={"dim": embedding.dim, "expected": embedding.expected_vector_dim, "mismatched": mismatched},
        ),
    ]


def build_embeddings_asset(provider: type[EmbeddingResource]) -> dg.AssetsDefinition:
    """The asset, in the concurrency pool of the configured provider's external system
    (``gpu`` for local CLIP, ``replicate``, ``openai``)."""

    @dg.asset(
        name="embeddings",
        partitions_def=image_shards_partitions_def,
        deps=[dg.AssetKey("r2_objects")],  # the images area publishes before vectors are made
        group_name="embeddings",
        kinds={provider.kind, "postgres"},
        pool=provider.pool,
        op_tags=gpu_op_tags(),  # the celery job sends this step to GPU workers
        retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
        check_specs=[
            dg.AssetCheckSpec("embedding_count", asset="embeddings",
                              description="Every processed image of the shard has a vector for the active model."),
            dg.AssetCheckSpec("vector_dim", asset="embeddings",
                              description="Every vector of the shard has the provider's (and EXPECTED_VECTOR_DIM's) dimension."),
        ],
    )
    def embeddings(
        context: dg.AssetExecutionContext,
        config: EmbeddingsConfig,
        database: PostgresResource,
        library: ImageLibraryResource,
        embedding: EmbeddingResource,
    ) -> dg.MaterializeResult:
        """A vector for every processed image of the shard from the configured provider
        (local CLIP, Replicate or OpenAI), stored in pgvector (``image_embeddings``, HNSW per
        model), with zero-shot tags or a caption. Per-image faults go to the retry queue;
        every paid call is in ``embedding_usage_log`` with its cost."""
        limit = config.limit or settings.env_int("EMBED_LIMIT", 0)
        try:
            with database.connect() as conn:
                report = embed_shard(
                    conn, context.partition_key, embedding, dsn=database.get_dsn(), cache_dir=library.cache,
                    run_id=context.run.run_id, limit=limit, progress=context.log.info,
                )
                cost = run_cost(conn, context.run.run_id)
                queue = retry_queue.queue_counts(conn, report.model)
                checks = _check_results(conn, context.partition_key, embedding)
        except ProviderConfigError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        context.log.info(
            f"shard {context.partition_key}: {report.counts['embedded']} embedded with {report.model}, "
            f"{report.counts['failed']} failed, {report.counts['rescheduled']} rescheduled, "
            f"{cost['calls']} paid request(s), ${cost['cost_usd']:.4f}"
        )
        return dg.MaterializeResult(
            metadata={
                **stage_metadata(report, "embedded"),
                "model": dg.MetadataValue.text(report.model),
                "provider": dg.MetadataValue.text(report.provider),
                "backend": dg.MetadataValue.text(report.backend or "remote"),
                "dim": dg.MetadataValue.int(report.dim),
                "cost_usd": dg.MetadataValue.float(round(cost["cost_usd"], 6)),
                "paid_requests": dg.MetadataValue.int(cost["calls"]),  # billable requests, as the limit counts
                "rate_limit_waited_seconds": dg.MetadataValue.float(round(report.rate_limit_waited, 1)),
                "errors_by_kind": dg.MetadataValue.json(report.errors_by_kind),
                "queue": dg.MetadataValue.json(queue),
            },
            check_results=checks,
        )

    return embeddings


embeddings = build_embeddings_asset(provider_class())


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
