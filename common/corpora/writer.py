"""Turn a list of utterance jobs into manifest shards: parallel, resumable, all-or-nothing.

Jobs are cut into fixed shards up front, so shard k always holds the same utterances;
a shard already on disk is complete (it was renamed into place) and is skipped on re-run.
A new output directory is built as `.NAME.partial` and renamed when every shard is written,
so a failed import leaves no directory that looks like a manifest (re-running resumes it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from common.corpora.manifest import Utterance, check_unique, shard_name, write_index, write_shard


def write_manifest(out_dir: str | Path, jobs: Sequence[Any], make: Callable[[Any], Utterance],
                   shard_size: int = 1000, workers: int = 2, label: str = "") -> dict:
    """Run `make` on every job (in `workers` processes) and write shards of `shard_size`."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    final = Path(out_dir)
    # a new output appears only when complete; an existing one is resumed in place
    out = final if final.exists() else final.parent / f".{final.name}.partial"
    out.mkdir(parents=True, exist_ok=True)
    shards = [list(jobs[i:i + shard_size]) for i in range(0, len(jobs), shard_size)]
    todo = [(k, s) for k, s in enumerate(shards) if not (out / shard_name(k)).exists()]
    columns = [TextColumn(f"[bold]{label or out.name}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("utts"), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress, \
            ProcessPoolExecutor(max_workers=max(1, workers), initializer=_one_thread) as pool:
        task = progress.add_task("prepare", total=sum(len(s) for _, s in todo))
        for k, shard in todo:
            rows = []
            for utt in pool.map(make, shard, chunksize=4):
                rows.append(utt.row())
                progress.advance(task)
            check_unique(r["utt_id"] for r in rows)
            write_shard(out / shard_name(k), rows)
    index = write_index(out)
    if out != final:
        out.rename(final)
    index["skipped_shards"] = len(shards) - len(todo)
    return index


def _one_thread() -> None:
    """A pool process is one of `workers` sharing the cores: torch's default of a thread per core
    in each would oversubscribe them (the synthetic corpus was made 3x slower on 2 cores)."""
    import torch

    torch.set_num_threads(1)
