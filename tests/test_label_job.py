"""The labeling job through a real `ray start --head` and `ray job submit`, then the head stopped.

The head runs with `--block` in its own process group, on ports of its own, and is stopped by
signalling that group: a global `ray stop` would also kill the test session's in-process Ray.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.corpora.manifest import iter_rows

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    gcs, dashboard, client, agent, metrics, runtime_env = free_ports(6)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}   # as a real cluster
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path_factory.mktemp("head") / "head.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--port", str(gcs),
         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
         "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
         "--object-store-memory", str(300 * 1024 * 1024), "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:
        probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", url], env=env,
                               capture_output=True, text=True)
        if probe.returncode == 0:
            break
        assert proc.poll() is None, f"ray start exited: {Path(log.name).read_text()[-2000:]}"
        time.sleep(2)
    else:
        pytest.fail("the Ray head's job server did not come up in 120 s")
    yield url, env
    os.killpg(proc.pid, signal.SIGTERM)   # `ray start --block` stops its head on SIGTERM
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()
    current = Path("/tmp/ray/ray_current_cluster")   # what `ray stop` would also remove
    if current.exists() and current.read_text().strip().endswith(f":{gcs}"):
        current.unlink()


def test_ray_job_submit_labels_the_corpus(head, synth_corpus, tiny_bundle, tmp_path):
    url, env = head
    data, out = synth_corpus[0] / "dev", tmp_path / "labels"
    command = [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(ROOT), "--",
               "python", "-m", "seqkd", "label", str(tiny_bundle[0]), "--data", str(data), "--out",
               str(out), "--beam", "3", "--nbest", "2"]
    for _ in range(6):   # the head's job agent can come up after its HTTP server, on a busy machine
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in done.stderr + done.stdout:
            break
        time.sleep(10)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in (done.stdout + done.stderr).lower()
    assert "labelled 6 utts" in done.stdout
    labels = {r["utt_id"]: r for r in iter_rows(out)}
    assert labels.keys() == {r["utt_id"] for r in iter_rows(data, ["utt_id"])}
    assert all(len(r["hyps"]) == 2 for r in labels.values())
