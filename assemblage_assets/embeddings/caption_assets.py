"""``captions``: a caption per derived image of the shard from the configured caption provider
(``CAPTION_PROVIDER``), with its check. Thin: the work is ``captions.caption_shard``."""

import dagster as dg

from assemblage_assets.core import settings
from assemblage_assets.core.metadata import stage_metadata
from assemblage_assets.embeddings import caption_queue
from assemblage_assets.embeddings.captions import caption_shard
from assemblage_assets.embeddings.usage_log import run_cost
from assemblage_assets.partitions import image_shards_partitions_def
from assemblage_assets.platform.celery_queues import gpu_op_tags
from resources.caption import TINY_BLIP_WARNING, CaptionResource, provider_class
from resources.database import PostgresResource
from resources.embedding.types import ProviderConfigError
from resources.image_library import ImageLibraryResource


class CaptionsConfig(dg.Config):
    limit: int = 0  # images per run at most; 0: CAPTION_LIMIT, else all


def build_captions_asset(provider: type[CaptionResource]) -> dg.AssetsDefinition:
    """The asset, in the concurrency pool of the configured provider's external system."""

    @dg.asset(
        name="captions",
        partitions_def=image_shards_partitions_def,
        deps=[dg.AssetKey("r2_objects")],  # after publishing: paid providers may be sent the public thumbnail
        group_name="embeddings",
        kinds={provider.kind, "postgres"},
        pool=provider.pool,
        op_tags=gpu_op_tags() if provider.pool == "gpu" else None,
        retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
        check_specs=[dg.AssetCheckSpec(
            "caption_count", asset="captions",
            description="Every derived image of the shard has a caption of the active caption model.",
        )],
    )
    def captions(
        context: dg.AssetExecutionContext,
        config: CaptionsConfig,
        database: PostgresResource,
        library: ImageLibraryResource,
        caption: CaptionResource,
    ) -> dg.MaterializeResult:
        """A one-sentence caption for every derived image of the shard (BLIP on this machine,
        OpenAI vision or a Replicate captioning model; ``CAPTION_PROVIDER``), stored in
        ``images.caption`` with its full-text index. Broken replies are recorded per image and
        retried; every paid call is in ``embedding_usage_log`` (purpose ``caption``) with its cost."""
        limit = config.limit or settings.env_int("CAPTION_LIMIT", 0)
        try:
            with database.connect() as conn:
                report = caption_shard(
                    conn, context.partition_key, caption, dsn=database.get_dsn(), cache_dir=library.cache,
                    run_id=context.run.run_id, limit=limit, progress=context.log.info,
                )
                cost = run_cost(conn, context.run.run_id)
                counts = caption_queue.shard_counts(conn, context.partition_key, report.model) if caption.enabled else {}
        except ProviderConfigError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        if report.random_weights:
            context.log.warning(TINY_BLIP_WARNING)
        context.log.info(
            f"shard {context.partition_key}: {report.counts['captioned']} captioned with {report.model or 'nothing'}, "
            f"{report.counts['failed']} failed, {report.counts['rescheduled']} rescheduled, "
            f"{cost['calls']} paid request(s), ${cost['cost_usd']:.4f}"
        )
        check = dg.AssetCheckResult(
            check_name="caption_count",
            passed=not caption.enabled or (counts["missing"] == 0 and counts["errored"] == 0),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"provider": caption.provider_name, "model": report.model, **counts},
        )
        return dg.MaterializeResult(
            metadata={
                **stage_metadata(report, "captioned"),
                "provider": dg.MetadataValue.text(report.provider),
                "model": dg.MetadataValue.text(report.model or "(captioning off: CAPTION_PROVIDER=none)"),
                "random_weights": dg.MetadataValue.bool(report.random_weights),
                "cost_usd": dg.MetadataValue.float(round(cost["cost_usd"], 6)),
                "paid_requests": dg.MetadataValue.int(cost["calls"]),  # billable requests, as the limit counts
                "errors_by_kind": dg.MetadataValue.json(report.errors_by_kind),
            },
            check_results=[check],
        )

    return captions


captions = build_captions_asset(provider_class())
