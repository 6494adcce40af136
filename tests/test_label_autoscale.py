"""The labeling job on an autoscaling cluster: it asks for a resource no node has yet, the
autoscaler adds a node offering it, and every utterance is labelled exactly once.

The cluster is Ray's fake multi-node provider (what `ray.cluster_utils.AutoscalingCluster`
starts: `RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`, whose autoscaler starts
worker "nodes" as local raylets). AutoscalingCluster itself is not used: its start and
shutdown run `ray stop --force`, which would stop every Ray on the machine (other test runs
included), and the config file it builds on is not in the Ray wheel. So the head runs with
`--block` in its own process group, on ports and a temp dir of its own, and is stopped by
signalling that group (the worker nodes are its children).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from common.corpora.manifest import iter_rows
from tests.test_label_job import BIN, free_ports

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
MB = 1024 * 1024


def fake_cluster_config(gcs_address: str) -> dict:
    """A 1-CPU head without the `labeler` resource; `labeler` nodes (1 CPU each) from 0 to 1."""
    return {
        "cluster_name": "seqkd-autoscale-test", "max_workers": 1, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "gcs_address": gcs_address,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "labeler": {"resources": {"CPU": 1, "labeler": 1, "object_store_memory": 150 * MB},
                        "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default", "auth": {}, "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


def nodes(address: str, env: dict) -> list[dict]:
    """The cluster's live nodes' resources, asked by a driver of its own (this process may
    already be in the test session's local Ray)."""
    probe = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
             "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))" % address)
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster():
    import ray._private.services

    gcs, dashboard, client, agent, metrics, runtime_env = free_ports(6)
    address = f"{ray._private.services.get_node_ip_address()}:{gcs}"
    # a temp dir of its own: Ray's socket paths (short enough) and its ray_current_cluster file,
    # which in /tmp/ray would send other sessions' bare ray.init() to this cluster
    root = Path(tempfile.mkdtemp(prefix="seqkd-as-"))
    (root / "cluster.json").write_text(json.dumps(fake_cluster_config(address)))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}   # as a real cluster
    env.pop("RAY_ADDRESS", None)
    log = open(root / "head.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--port", str(gcs), "--num-cpus", "1",
         f"--autoscaling-config={root / 'cluster.json'}", "--temp-dir", str(root / "ray"),
         "--include-dashboard", "false", "--dashboard-port", str(dashboard),
         "--ray-client-server-port", str(client),
         "--dashboard-agent-listen-port", str(agent), "--metrics-export-port", str(metrics),
         "--runtime-env-agent-port", str(runtime_env), "--object-store-memory", str(150 * MB),
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_head(proc, address, env, root / "head.log")
        yield address, env
    finally:
        stop_group(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def wait_for_head(proc: subprocess.Popen, address: str, env: dict, log: Path) -> None:
    deadline = time.time() + 120
    while True:
        status = subprocess.run([str(BIN / "ray"), "status", "--address", address], env=env,
                                capture_output=True, text=True)
        if status.returncode == 0:
            return
        assert proc.poll() is None, f"ray start exited: {log.read_text()[-2000:]}"
        assert time.time() < deadline, f"the head did not come up in 120 s: {status.stderr[-2000:]}"
        time.sleep(2)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the head's process group (`ray start --block` stops its node on it, and the
    autoscaler's worker nodes die with it), SIGKILL to whatever is left after a minute."""
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)   # anyone left in the group?
        except ProcessLookupError:
            break
        proc.poll()
        time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_labeling_scales_the_cluster_up_from_zero_workers(cluster, synth_corpus, tiny_bundle, tmp_path):
    address, env = cluster
    assert not any("labeler" in n for n in nodes(address, env))   # the head only, no labeler node
    data, out = synth_corpus[0] / "train", tmp_path / "labels"
    done = subprocess.run(
        [sys.executable, "-m", "seqkd", "label", str(tiny_bundle[0]), "--data", str(data),
         "--out", str(out), "--beam", "3", "--nbest", "2", "--batch-size", "4", "--concurrency", "1:2",
         "--resources", '{"labeler": 1}', "--address", address, "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the head cannot hold a labeler, and Ray's v1 autoscaler does not publish its node types
    assert "no node of this cluster can hold a labeling actor" in done.stderr
    assert sum("labeler" in n for n in nodes(address, env)) == 1   # the autoscaler added it
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    rows = list(iter_rows(out))
    ids = [r["utt_id"] for r in rows]
    assert len(ids) == len(set(ids)) == summary["utterances"] == 24
    assert set(ids) == {r["utt_id"] for r in iter_rows(data, ["utt_id"])}
    assert all(len(r["hyps"]) == 2 for r in rows)
