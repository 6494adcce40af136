"""cluster.yaml passes Ray's own validation (as `ray up` does) and offers what our apps request."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster() -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(yaml.safe_load((ROOT / "cluster.yaml").read_text())))
    validate_config(config)   # raises on a schema violation
    return config


def fits(request: dict, node_types: dict) -> bool:
    return any(all(t["resources"].get(k, 0) >= v for k, v in request.items() if v)
               for t in node_types.values())


def test_cpu_head_and_autoscaling_gpu_workers(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for name, t in types.items() if t["resources"].get("GPU", 0) > 0]
    assert gpu and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu)
    assert any("pip install" in c and "-e ." in c for c in cluster["setup_commands"])
    assert any(dst.startswith("/data/bundles") for dst in cluster["file_mounts"])


def test_serve_and_labeling_requests_fit_the_node_types(cluster):
    types = cluster["available_node_types"]
    serve = yaml.safe_load((ROOT / "conf" / "serve.yaml").read_text())
    for app in serve["applications"]:
        for dep in app["deployments"]:
            opts = dep["ray_actor_options"]
            assert fits({"CPU": opts["num_cpus"], "GPU": opts["num_gpus"]}, types)
            assert fits({"CPU": opts["num_cpus"], "GPU": 1}, types)   # the GPU variant in its comment
    # a labeling actor: one CPU and --num-gpus-per-worker 1; a Ray Train GPU worker likewise
    assert fits({"CPU": 1, "GPU": 1}, types)
    wsj = yaml.safe_load((ROOT / "conf" / "wsj_teacher.yaml").read_text())
    gpus = sum(t["resources"].get("GPU", 0) * t["max_workers"] for t in types.values())
    assert gpus >= wsj["scaling"]["num_workers"]
