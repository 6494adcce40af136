"""Shards (manifests, pseudo labels) as a Ray Dataset: the one place training and labeling read them.

Ray Data's Parquet reader V2 (its default) lists files through a pool of up to 32 `FooterReader`
actors, each a new Python process. Measured on a 2-core node beside a Ray Train worker: reading
the demo's 4 training shards started 26 worker processes, listing took 9.5 s instead of 0.6 s,
and the first epoch's first batch came 15 s after the loop asked for it. Our shards are few
and large (hundreds of utterances each) and their row order is the contract, so the V1 reader
(metadata read by the driver for a few files, by tasks for many; no actors) reads them with
the same rows in the same order and none of that start-up. The choice is made while the
dataset is built and undone after, so nothing else in the process changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import ray.data


def read_shards(paths: Sequence[str], columns: Sequence[str], include_paths: bool = False) -> "ray.data.Dataset":
    """The `columns` of Parquet shards `paths`, rows in file order (plus `path` with include_paths)."""
    ctx = ray.data.DataContext.get_current()
    was = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        ds = ray.data.read_parquet(list(paths), include_paths=include_paths, file_extensions=["parquet"])
    finally:
        ctx.use_datasource_v2 = was
    return ds.select_columns(list(columns) + (["path"] if include_paths else []))
