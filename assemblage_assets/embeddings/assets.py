"""``embeddings``: the fourth stage of every directory shard, a vector per processed image."""

import dagster as dg
from psycopg.rows import tuple_row

from assemblage_assets.core import settings
from assemblage_assets.core.metadata import stage_metadata
from assemblage_assets.embeddings import retry_queue
from assemblage_assets.embeddings.embed import count_candidates, embed_shard
from assemblage_assets.embeddings.usage_log import run_cost
from assemblage_assets.images.assets import r2_objects
from assemblage_assets.partitions import image_shards_partitions_def
from assemblage_assets.platform.celery_queues import gpu_op_tags
from resources.database import PostgresResource
from resources.embedding import POOLS, EmbeddingResource, provider_from_env
from resources.embedding.types import ProviderConfigError
from resources.image_library import ImageLibraryResource

KINDS = {"local_clip": "pytorch", "replicate": "replicate", "openai": "openai"}


class EmbeddingsConfig(dg.Config):
    limit: int = 0  # images per run at most; 0: EMBED_LIMIT, else all


def _check_results(conn, shard: str, embedding: EmbeddingResource) -> list[dg.AssetCheckResult]:
    model = embedding.model_id
    missing = count_candidates(conn, shard, model)
    waiting = conn.cursor(row_factory=tuple_row).execute(
        """SELECT count(*) FILTER (WHERE q.status = 'retry'), count(*) FILTER (WHERE q.status = 'errored')
           FROM embedding_queue q WHERE q.model = %s
             AND EXISTS (SELECT 1 FROM processing_log p WHERE p.image_id = q.image_id AND p.shard = %s)""",
        (model, shard),
    ).fetchone()
    dims = conn.cursor(row_factory=tuple_row).execute(
        """SELECT count(*), count(*) FILTER (WHERE e.dim <> %s OR vector_dims(e.embedding) <> %s)
           FROM image_embeddings e WHERE e.model = %s
             AND EXISTS (SELECT 1 FROM processing_log p WHERE p.image_id = e.image_id AND p.shard = %s)""",
        (embedding.dim, embedding.dim, model, shard),
    ).fetchone()
    return [
        dg.AssetCheckResult(
            check_name="embedding_count",
            passed=missing == 0 and waiting[1] == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "vectors": dims[0], "missing": missing, "retry_pending": waiting[0], "errored": waiting[1],
                "model": model,
            },
        ),
        dg.AssetCheckResult(
            check_name="vector_dim",
            passed=dims[1] == 0 and (not embedding.expected_vector_dim or embedding.dim == embedding.expected_vector_dim),
            metadata={"dim": embedding.dim, "expected": embedding.expected_vector_dim, "mismatched": dims[1]},
        ),
    ]


def build_embeddings_asset(provider: str) -> dg.AssetsDefinition:
    """The asset, in the concurrency pool of the configured provider's external system
    (``gpu`` for local CLIP, ``replicate``, ``openai``)."""

    @dg.asset(
        name="embeddings",
        partitions_def=image_shards_partitions_def,
        deps=[r2_objects],
        group_name="embeddings",
        kinds={KINDS[provider], "postgres"},
        pool=POOLS[provider],
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
            f"{report.counts['failed']} failed, {report.counts['rescheduled']} rescheduled, ${cost['cost_usd']:.4f}"
        )
        return dg.MaterializeResult(
            metadata={
                **stage_metadata(report, "embedded"),
                "model": dg.MetadataValue.text(report.model),
                "provider": dg.MetadataValue.text(report.provider),
                "dim": dg.MetadataValue.int(report.dim),
                "cost_usd": dg.MetadataValue.float(round(cost["cost_usd"], 6)),
                "paid_calls": dg.MetadataValue.int(cost["calls"]),
                "rate_limit_waited_seconds": dg.MetadataValue.float(round(report.rate_limit_waited, 1)),
                "errors_by_kind": dg.MetadataValue.json(report.errors_by_kind),
                "queue": dg.MetadataValue.json(queue),
            },
            check_results=checks,
        )

    return embeddings


embeddings = build_embeddings_asset(provider_from_env())
