"""Projection for a 5,000,000-image library from the figures the other benchmarks measured.

Nothing is timed here: the script is the arithmetic behind docs/scale.md, so the projection can
be redone when a benchmark is rerun (pass its JSON) or when the assumptions change (flags).
Every input says where it comes from; the ones not measurable on the development VM (GPU
throughput, network bandwidth) are marked as assumptions and are flags.

    .venv/bin/python benchmarks/project_5m.py
    .venv/bin/python benchmarks/project_5m.py --e2e /tmp/assemblage-bench/end_to_end/end_to_end-1000.json \\
        --index /tmp/hnsw/1m.json --cpu-workers 16 --cores 8 --gpu-workers 4
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

MB = 1e6
GB = 1e9
TB = 1e12


@dataclass
class Measured:
    """Rates on the 2-core development VM (images/s for the whole machine) and sizes."""

    cores: int = 2
    scan_ips: float = 1541.0  # end_to_end, direct, quiet round
    derive_ips_1600: float = 43.7  # end_to_end, 1600x1200 sources
    derive_ips_12mp: float = 16.2  # derivatives.py, 12 MP camera JPEGs, 2-process pool
    publish_local_ips: float = 718.0  # end_to_end, local store (CPU side of publishing)
    embed_ips: dict[str, float] | None = None  # whole embeddings stage, CPU
    model_load_s: float = 3.7  # ViT-B/32 through load_clip, once per run
    dagster_outside_steps_s: float = 4.7  # per 1,000-image shard, both jobs, incl. model load
    cli_process_s: float = 23.0  # `dagster asset materialize` process start + code location
    db_bytes_per_image_512: float = 9.93 * MB / 1000  # all tables, 512-d vectors + HNSW
    embeddings_bytes_per_image_512: float = 5.84 * MB / 1000
    vec768_table_bytes_per_row: float = 8079.2 * MB / 1e6  # vector_index.py, 1M rows, table + TOAST
    vec768_index_bytes_per_row: float = 3906.3 * MB / 1e6
    index_build_s_1m: float = 1169.8  # 1M x 768-d, 1 worker + leader, graph in memory
    index_graph_bytes_per_row: float = 4510 * MB / 1e6 / 1.25  # plan_build's estimate (x1.25 margin removed)
    incremental_rows_per_s: float = 112.5  # inserts into a 1M-row HNSW index, 2 cores
    original_bytes: dict[str, float] | None = None
    thumbnail_bytes: float = 5.4e3
    preview_bytes: float = 187e3
    rss_embed_run_mb: float = 1435.0  # ViT-B/32 run incl. children
    rss_derive_run_mb: float = 335.0

    def __post_init__(self) -> None:
        # embeddings stage: ViT-B/32 measured end to end; ViT-L/14 from embeddings.py (stage 1.03x model-only)
        self.embed_ips = self.embed_ips or {"ViT-B/32": 19.6, "ViT-L/14": 1.0}
        self.original_bytes = self.original_bytes or {"1600x1200": 596e3, "12MP": 3.7e6}


def load_overrides(m: Measured, e2e: Path | None, index: Path | None) -> list[str]:
    """Replace defaults with the figures of fresh benchmark runs; returns what was replaced."""
    used = []
    if e2e and e2e.exists():
        data = json.loads(e2e.read_text())
        direct = data["summary"]["direct"]
        stages = direct["stages"]
        m.scan_ips = stages["raw_files"]["images_per_s"]
        m.derive_ips_1600 = stages["derivatives"]["images_per_s"]
        m.publish_local_ips = stages["r2_objects"]["images_per_s"]
        m.embed_ips["ViT-B/32"] = stages["embeddings"]["images_per_s"]
        storage = direct["storage"]
        m.db_bytes_per_image_512 = storage["db_tables_total_bytes_per_1000"] / 1000
        m.embeddings_bytes_per_image_512 = storage["db_table_bytes_per_1000"]["image_embeddings"] / 1000
        used.append(f"end-to-end rates and sizes from {e2e}")
    if index and index.exists():
        data = json.loads(index.read_text())
        bulk = data["bulk"]
        rows = data["rows"]
        m.index_build_s_1m = bulk["build_seconds"] * (1e6 / rows) * math.log(1e6) / math.log(rows)
        m.vec768_table_bytes_per_row = bulk["table_mb"] * MB / rows
        m.vec768_index_bytes_per_row = bulk["index_mb"] * MB / rows
        if data.get("incremental"):
            m.incremental_rows_per_s = data["incremental"]["rows_per_s"]
        used.append(f"vector index figures from {index}")
    return used


def core_seconds(m: Measured, source: str, model: str) -> dict[str, float]:
    """CPU core-seconds per image per stage (the VM's rate spread over its cores)."""
    derive = m.derive_ips_12mp if source == "12MP" else m.derive_ips_1600
    return {
        "raw_files": m.cores / m.scan_ips,
        "derivatives": m.cores / derive,
        "r2_objects (CPU side)": m.cores / m.publish_local_ips,
        "embeddings": m.cores / m.embed_ips[model],
    }


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h"


def project(args: argparse.Namespace, m: Measured) -> None:
    n = args.images
    shards = math.ceil(n / args.shard_size)
    print(f"# {n:,} images in {shards:,} shards of {args.shard_size:,}; CPU workers: {args.cpu_workers} x "
          f"{args.cores} cores; GPU workers: {args.gpu_workers}; upload bandwidth {args.upload_gbit:g} Gbit/s in all\n")

    upload_bytes_per_s = args.upload_gbit * 1e9 / 8
    for source in ("12MP", "1600x1200"):
        for model in ("ViT-L/14", "ViT-B/32"):
            per = core_seconds(m, source, model)
            cpu_cores = args.cpu_workers * args.cores
            objects = m.original_bytes[source] + m.thumbnail_bytes + m.preview_bytes
            upload_s = n * objects / upload_bytes_per_s
            run_overhead = shards * (m.dagster_outside_steps_s + m.model_load_s)  # core-s, spread over workers
            print(f"## {source} sources, {model}")
            print("| stage | core-s / image | core-hours for all | CPU-only wall | with GPU embedding |")
            print("|---|---:|---:|---:|---:|")
            cpu_only = {}
            with_gpu = {}
            for stage, cs in per.items():
                total = cs * n
                cpu_only[stage] = total / cpu_cores
                with_gpu[stage] = cpu_only[stage]
                if stage == "embeddings" and args.gpu_workers:
                    gpu_ips = args.gpu_ips[model] * args.gpu_workers
                    with_gpu[stage] = n / gpu_ips
                print(f"| {stage} | {cs:.4f} | {total / 3600:,.0f} | {hours(cpu_only[stage])} | {hours(with_gpu[stage])} |")
            # one run at a time per worker: what a run spends outside its steps is that worker's wall time
            overhead_wall = run_overhead / args.cpu_workers
            print(f"| Dagster runs (outside steps, model loads) | | {run_overhead / 3600:,.1f} | "
                  f"{hours(overhead_wall)} | {hours(overhead_wall)} |")
            print(f"| upload, {objects / MB:.2f} MB per image ({n * objects / TB:.1f} TB) | | | {hours(upload_s)} | {hours(upload_s)} |")
            # Stages overlap across shards (different runs), so the wall time is the slowest resource,
            # not the sum; the CPU stages share one pool of cores.
            cpu_side = sum(cpu_only.values()) + overhead_wall
            gpu_cpu_side = sum(v for k, v in with_gpu.items() if k != "embeddings") + overhead_wall
            gpu_side = with_gpu["embeddings"]
            wall_cpu = max(cpu_side, upload_s)
            wall_gpu = max(gpu_cpu_side, gpu_side, upload_s)
            bottleneck_cpu = "embeddings (CPU)" if cpu_side >= upload_s else "upload bandwidth"
            limits = {"CPU stages": gpu_cpu_side, "GPU embedding": gpu_side, "upload bandwidth": upload_s}
            bottleneck_gpu = max(limits, key=limits.get)
            line = f"\nCPU-only: ~{hours(wall_cpu)} (bound by {bottleneck_cpu})"
            if args.gpu_workers:
                line += f"; with {args.gpu_workers} GPU worker(s): ~{hours(wall_gpu)} (bound by {bottleneck_gpu})"
            print(line + "\n")

    dim_bytes = m.vec768_table_bytes_per_row + m.vec768_index_bytes_per_row
    other = m.db_bytes_per_image_512 - m.embeddings_bytes_per_image_512
    db_total = n * (other + dim_bytes)
    build_5m = m.index_build_s_1m * (n / 1e6) * math.log(n) / math.log(1e6)
    graph = n * m.index_graph_bytes_per_row
    print("## Database")
    print(f"- catalogue without vectors: {n * other / GB:,.1f} GB; 768-d vectors: table+TOAST "
          f"{n * m.vec768_table_bytes_per_row / GB:,.1f} GB, HNSW {n * m.vec768_index_bytes_per_row / GB:,.1f} GB; "
          f"total ~{db_total / GB:,.0f} GB")
    print(f"- HNSW build, bulk mode: ~{hours(build_5m)} on 2 cores (n log n from the 1M build); with "
          f"{args.db_cores} cores ({args.db_cores - 1} parallel workers) ~{hours(build_5m * 2 / args.db_cores)}; "
          f"graph needs maintenance_work_mem ~{graph * 1.25 / GB:,.0f} GB")
    print(f"- the same vectors inserted into a live index: ~{hours(n / m.incremental_rows_per_s)} of database time "
          f"on 2 cores ({hours(n / m.incremental_rows_per_s * 2 / args.db_cores)} on {args.db_cores})")
    print(f"\n## Memory per run: embed (ViT-B/32) {m.rss_embed_run_mb:,.0f} MB; derive {m.rss_derive_run_mb:,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5_000_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--cpu-workers", type=int, default=16)
    parser.add_argument("--cores", type=int, default=8, help="cores per CPU worker")
    parser.add_argument("--gpu-workers", type=int, default=4)
    parser.add_argument("--gpu-ips-b32", type=float, default=450.0,
                        help="ASSUMPTION: ViT-B/32 images/s per GPU (T4 estimate in docs/benchmarks.md)")
    parser.add_argument("--gpu-ips-l14", type=float, default=27.0,
                        help="ASSUMPTION: ViT-L/14 images/s per GPU (T4 estimate in docs/benchmarks.md)")
    parser.add_argument("--upload-gbit", type=float, default=2.0, help="ASSUMPTION: aggregate upload bandwidth")
    parser.add_argument("--db-cores", type=int, default=8, help="cores of the database server")
    parser.add_argument("--e2e", type=Path, help="end_to_end.py JSON to take rates and sizes from")
    parser.add_argument("--index", type=Path, help="vector_index.py JSON to take index figures from")
    args = parser.parse_args()
    args.gpu_ips = {"ViT-B/32": args.gpu_ips_b32, "ViT-L/14": args.gpu_ips_l14}
    m = Measured()
    for line in load_overrides(m, args.e2e, args.index):
        print(f"(using {line})")
    project(args, m)


if __name__ == "__main__":
    main()
