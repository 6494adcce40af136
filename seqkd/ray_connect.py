"""Join the cluster a command should run on: --address, a job's own cluster, or a new local Ray."""

from __future__ import annotations

import os

from seqkd import console


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """True when this call started a new local Ray (a fixed size: no autoscaler adds to it)."""
    import ray

    console.begin()   # Ray's output goes to the command's log file from here on (unless --verbose)
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:   # an existing cluster (inside `ray job submit`, RAY_ADDRESS says which)
        ray.init(address=address)
        return False
    # a new one, always
    # One node and no autoscaler: no node is ever drained, so Ray Train's preemption watcher
    # has nothing to watch; it is one more process per run, 0.6-0.8 s of CPU while the first
    # step is prepared (fit() to the end of a one-epoch demo run: 26.6 vs 27.8 s, medians of 4)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    return True
