"""Batch recommendations on the workers (``oirl recommend --out --dask``): each query
partition is scored and written by a worker, into the directory the driver renames
into place (:func:`oirl.data.batch.recommend_to_parquet`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from oirl.data.batch import PartWriter, read_query_partition, recommend_frame, write_part
from oirl.distributed.blocks import worker_recommender
from oirl.embed.base import default_cache_dir


def _recommend_part(source: Any, index: int, model_dir: str, cache_dir: str, directory: str, options: dict[str, Any]) -> int:
    rec = worker_recommender(model_dir, cache_dir)
    return write_part(recommend_frame(rec, read_query_partition(source), **options), directory, index)


def part_writer(client, model_dir: str | Path, cache_dir: str | Path | None) -> PartWriter:
    """Write the partitions on the cluster: every worker loads the bundle once."""
    cache = str(Path(cache_dir or default_cache_dir()).resolve())
    bundle = str(Path(model_dir).resolve())

    def write_parts(sources: list[Any], directory: Path, options: dict[str, Any]) -> list[int]:
        data = [client.scatter(s) if isinstance(s, pd.DataFrame) else s for s in sources]
        futures = [client.submit(_recommend_part, s, i, bundle, cache, str(Path(directory).resolve()), options, pure=False)
                   for i, s in enumerate(data)]
        return client.gather(futures)

    return write_parts
