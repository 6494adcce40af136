"""What a Ray cluster can hold of the labeling actors asked for: the nodes alive and the node
types an autoscaler may add, so that a pool no node can ever fill is named in one line rather
than waited for in silence.

Ray has no public API for the autoscaler's node types. The v2 autoscaler publishes them in the
GCS's key-value store (namespace `__autoscaler`, key `__autoscaler_cluster_config`, a
`ClusterConfig` protobuf), where Ray Data reads them through `ray._private.state`; this reads the
same key through `ray.experimental.internal_kv`, and the test with Ray's own
`AutoscalingCluster` (tests/test_label_autoscale.py) checks that it still finds them.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)

AUTOSCALER_NAMESPACE = "__autoscaler"                 # ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE
CLUSTER_CONFIG_KEY = "__autoscaler_cluster_config"    # ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY


def actor_request(num_gpus: float, resources: dict[str, float] | None) -> dict[str, float]:
    """The resources one teacher actor holds (Ray Data gives an actor one CPU by default)."""
    return {"CPU": 1.0, **({"GPU": num_gpus} if num_gpus else {}), **(resources or {})}


def warn_if_unsatisfiable(request: dict[str, float], pool: tuple[int, int]) -> None:
    """Ray queues an actor or task that no node can hold rather than failing it, so a pool that
    cannot be filled would wait without a word. Warn (not refuse: nodes can join, by the
    autoscaler or by hand) when no node alive can hold an actor and no autoscaler node type that
    could is known, when the nodes alive and those the autoscaler may add can hold fewer than
    the pool's maximum, and when the actors the pool starts with would take every CPU of the
    nodes alive, leaving none for the tasks that read the shards."""
    import ray

    alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    now = sum(_fits(node, request) for node in alive)
    growth = autoscaler_capacity(request)
    if now == 0 and not growth:
        log.warning("no node of this cluster can hold a labeling actor (each asks for %s), and no "
                    "autoscaler node type that could is known: the job waits until such a node "
                    "joins", request)
    elif growth is not None and now + growth < pool[1]:
        log.warning("this cluster can ever hold %d of the %d labeling actors asked for (each asks "
                    "for %s)", now + growth, pool[1], request)
    if not growth and now >= pool[0] and sum(n.get("CPU", 0) for n in alive) - pool[0] * request["CPU"] < 1:
        log.warning("the %d labeling actors the pool starts with take every CPU of this cluster's "
                    "nodes and leave none to read the shards: the job waits until a node joins; use "
                    "--concurrency 1:%d, or fewer actors", pool[0], pool[1])


def _fits(node: dict[str, float], request: dict[str, float]) -> int:
    """How many actors asking for `request` one node with resources `node` can hold."""
    return min(int(node.get(k, 0) // v) for k, v in request.items() if v)


def autoscaler_capacity(request: dict[str, float]) -> float | None:
    """Actors that the node types the autoscaler may add could hold at their max counts (inf when
    unbounded), or None when the cluster publishes no autoscaling config (no autoscaler, or
    Ray's v1 autoscaler, which keeps its node types to itself). The v2 autoscaler publishes it in
    the GCS, where Ray Data and Ray Train read it too."""
    from ray.core.generated.autoscaler_pb2 import ClusterConfig
    from ray.experimental.internal_kv import _internal_kv_get

    blob = _internal_kv_get(CLUSTER_CONFIG_KEY, namespace=AUTOSCALER_NAMESPACE)
    if not blob:
        return None
    config = ClusterConfig.FromString(blob)
    total: float = 0
    for group in config.node_group_configs:
        per_node = _fits(dict(group.resources), request)
        if per_node and group.max_count:
            total += math.inf if group.max_count < 0 else per_node * group.max_count
    return total
