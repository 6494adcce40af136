"""Join the cluster a command should run on: --address, a job's own cluster, or a new local Ray."""

from __future__ import annotations

import os

from seqkd import console


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    import ray

    console.begin()   # Ray's output goes to the command's log file from here on (unless --verbose)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:   # an existing cluster (inside `ray job submit`, RAY_ADDRESS says which)
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)   # a new one, always
