"""Load test of the teacher service on loopback: request batching on vs off (max_batch_size=1),
or, with --overload, clients past its capacity.

    python bench/serve_load.py [--bundle runs/teacher/bundle] [--requests 128 --clients 32
                               --beam 4 --max-batch-size 32] [--json out.json]
    python bench/serve_load.py --overload [--clients N --max-queued-requests 48
                               --max-batch-size 16 --client-timeout 60] [--json out.json]

Starts the Serve app on 127.0.0.1 twice (one replica each time), sends the same `--requests`
uploads of real espeak-ng speech from `--clients` concurrent clients (bounded in count and
by `--max-seconds`), and reports throughput and p50/p95/p99 latency. Without `--bundle` it
uses a random-weight bundle of conf/teacher.yaml (such a model rarely ends a hypothesis, so
every request decodes to the maximum length: a heavy, steady load).

--overload starts the app once, as `seqkd serve` does (services.teacher.deployment_options), and
sends one upload from each of `--clients` clients at once (default: 4x what a replica holds),
each waiting at most `--client-timeout`: it counts the answered, the refused (503; by the
replica with a JSON detail, or by Ray's proxy in plain text) and the timed out, gives p50/p99
of the answered and of the refused, and the replica's resident memory before and at its peak.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

SENTENCES = ["stocks rose sharply in early trading", "the central bank left rates unchanged",
             "oil prices fell for a third day", "analysts expect earnings to improve next year"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle")
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--clients", type=int, help="default 32; with --overload, 4x what the replica holds")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--max-batch-size", type=int, help="default 32; with --overload, 16 (seqkd serve's)")
    ap.add_argument("--batch-wait-ms", type=float, default=50.0)
    ap.add_argument("--max-seconds", type=float, default=240.0, help="per mode; stop sending after")
    ap.add_argument("--json")
    ap.add_argument("--overload", action="store_true", help="clients past capacity: answered, refused, timed out")
    ap.add_argument("--max-queued-requests", type=int, default=48, help="with --overload: the replica's bound")
    ap.add_argument("--retry-after-s", type=float, default=1.0)
    ap.add_argument("--client-timeout", type=float, default=60.0, help="with --overload: each client's limit (s)")
    args = ap.parse_args()
    if args.overload:
        overload_main(args)
        return
    args.clients, args.max_batch_size = args.clients or 32, args.max_batch_size or 32

    from ray import serve

    from services.teacher import Teacher

    with serving(args) as (bundle, audio, port):
        rows = {}
        for mode, size in (("unbatched", 1), ("batched", args.max_batch_size)):
            serve.run(Teacher.options(max_ongoing_requests=max(64, 2 * args.clients)).bind(
                bundle=str(bundle), max_batch_size=size, batch_wait_ms=args.batch_wait_ms),
                name="teacher", route_prefix="/")
            rows[mode] = asyncio.run(load(f"http://127.0.0.1:{port}", audio, args))
            serve.delete("teacher")

    ratio = rows["batched"]["throughput_rps"] / rows["unbatched"]["throughput_rps"]
    result = {"requests": args.requests, "clients": args.clients, "beam": args.beam,
              "max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms,
              "bundle": args.bundle or "random-weight conf/teacher.yaml", "modes": rows,
              "throughput_ratio": round(ratio, 2)}
    table = Table(title=f"teacher service, {args.requests} requests from {args.clients} clients, "
                        f"beam {args.beam}")
    for col in ["mode", "ok", "req/s", "p50 s", "p95 s", "p99 s", "audio s per s"]:
        table.add_column(col, justify="right")
    for mode, r in rows.items():
        table.add_row(f"{mode} (max_batch_size {1 if mode == 'unbatched' else args.max_batch_size})",
                      str(r["ok"]), f"{r['throughput_rps']:.2f}", f"{r['p50_s']:.2f}",
                      f"{r['p95_s']:.2f}", f"{r['p99_s']:.2f}", f"{r['audio_s_per_s']:.1f}")
    console = Console()
    console.print(table)
    console.print(f"throughput ratio batched / unbatched: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


async def load(url: str, audio: list[tuple[bytes, float]], args: argparse.Namespace) -> dict:
    """`args.requests` uploads from `args.clients` concurrent clients; latency of each."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests):
        queue.put_nowait(i)
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + args.max_seconds
    seconds_of_audio = 0.0

    async def client() -> None:
        nonlocal failures, seconds_of_audio
        async with httpx.AsyncClient(base_url=url, timeout=args.max_seconds) as http:
            while not queue.empty() and time.perf_counter() < deadline:
                data, duration = audio[queue.get_nowait() % len(audio)]
                began = time.perf_counter()
                answer = await http.post("/v1/transcribe", content=data, params={"beam": args.beam},
                                         headers={"Content-Type": "audio/wav"})
                if answer.status_code == 200:
                    latencies.append(time.perf_counter() - began)
                    seconds_of_audio += duration
                else:
                    failures += 1

    async with httpx.AsyncClient(base_url=url) as http:   # warm-up: one request
        await http.post("/v1/transcribe", content=audio[0][0], params={"beam": args.beam},
                        headers={"Content-Type": "audio/wav"}, timeout=args.max_seconds)
    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    wall = time.perf_counter() - began
    lat = np.array(latencies)
    return {"ok": len(latencies), "failed": failures, "wall_s": round(wall, 2),
            "throughput_rps": len(latencies) / wall, "audio_s_per_s": seconds_of_audio / wall,
            **{f"p{q}_s": float(np.percentile(lat, q)) for q in (50, 95, 99)}}


def overload_main(args: argparse.Namespace) -> None:
    """One replica bounded as `seqkd serve` bounds it, and more clients at once than it holds."""
    from ray import serve

    from services.teacher import Teacher, deployment_options

    args.max_batch_size = args.max_batch_size or 16
    holds = args.max_batch_size + args.max_queued_requests
    args.clients = args.clients or 4 * holds
    limits = {"max_batch_size": args.max_batch_size, "max_queued_requests": args.max_queued_requests,
              "retry_after_s": args.retry_after_s}
    with serving(args) as (bundle, audio, port):
        handle = serve.run(Teacher.options(**deployment_options(**limits)).bind(
            bundle=str(bundle), batch_wait_ms=args.batch_wait_ms, **limits), name="teacher", route_prefix="/")
        row = asyncio.run(flood(f"http://127.0.0.1:{port}", audio, args, handle))
    result = {"clients": args.clients, "replica_holds": holds, **limits, "beam": args.beam,
              "client_timeout_s": args.client_timeout, "max_seconds": args.max_seconds,
              "bundle": args.bundle or "random-weight conf/teacher.yaml", **row}
    table = Table(title=f"teacher service past capacity: {args.clients} clients at once, one replica holding "
                        f"{holds} ({args.max_batch_size} batched + {args.max_queued_requests} queued), "
                        f"beam {args.beam}, client timeout {args.client_timeout:g} s")
    for col in ["", "count", "p50 s", "p99 s"]:
        table.add_column(col, justify="right")
    for kind in ("answered", "refused", "timed_out", "failed"):
        lat = row.get(f"{kind}_latency_s", {})
        table.add_row(kind.replace("_", " "), str(row[kind]), _fmt(lat.get("p50")), _fmt(lat.get("p99")))
    console = Console()
    console.print(table)
    mb = lambda b: "n/a" if b is None else f"{b / 2**20:.0f} MB"
    console.print(f"refused by the replica (JSON detail) {row['refused_by_replica']}, by Ray's proxy (text) "
                  f"{row['refused_by_proxy']}, with Retry-After {row['refusals_with_retry_after']}; "
                  f"decoded {row['replica']['decoded']}, cancelled {row['replica']['cancelled']}; replica RSS "
                  f"{mb(row['replica_rss_before_bytes'])} before, peak {mb(row['replica']['peak_rss_bytes'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


async def flood(url: str, audio: list[tuple[bytes, float]], args: argparse.Namespace, handle) -> dict:
    """One upload from each of `args.clients` clients at once; what became of each, and when."""
    outcomes: dict[str, list[float]] = {"answered": [], "refused": [], "timed_out": [], "failed": []}
    by_proxy = with_retry_after = 0
    limits = httpx.Limits(max_connections=args.clients + 1, max_keepalive_connections=args.clients + 1)
    async with httpx.AsyncClient(base_url=url, limits=limits) as http:
        await http.post("/v1/transcribe", content=audio[0][0], params={"beam": args.beam},   # warm-up
                        headers={"Content-Type": "audio/wav"}, timeout=args.max_seconds)
        before = await asyncio.to_thread(lambda: handle.stats.remote().result())
        Path(f"/proc/{before['pid']}/clear_refs").write_text("5")   # peak RSS := the current RSS

        async def client(i: int) -> None:
            nonlocal by_proxy, with_retry_after
            began = time.perf_counter()
            try:
                answer = await http.post("/v1/transcribe", content=audio[i % len(audio)][0],
                                         params={"beam": args.beam}, headers={"Content-Type": "audio/wav"},
                                         timeout=args.client_timeout)
            except httpx.TimeoutException:
                outcomes["timed_out"].append(time.perf_counter() - began)
                return
            except httpx.HTTPError:
                outcomes["failed"].append(time.perf_counter() - began)
                return
            kind = {200: "answered", 503: "refused"}.get(answer.status_code, "failed")
            outcomes[kind].append(time.perf_counter() - began)
            if kind == "refused":
                by_proxy += not answer.headers.get("content-type", "").startswith("application/json")
                with_retry_after += "retry-after" in answer.headers

        began = time.perf_counter()
        tasks = [asyncio.create_task(client(i)) for i in range(args.clients)]
        done, pending = await asyncio.wait(tasks, timeout=args.max_seconds)
        for task in pending:   # bounded in time: what is still open when the budget ends
            task.cancel()
        wall = time.perf_counter() - began
        after = await asyncio.to_thread(lambda: handle.stats.remote().result())
    pct = lambda xs: {"p50": float(np.percentile(xs, 50)), "p99": float(np.percentile(xs, 99))} if xs else {}
    return {**{k: len(v) for k, v in outcomes.items()}, "unfinished_at_max_seconds": len(pending),
            **{f"{k}_latency_s": pct(v) for k, v in outcomes.items()},
            "refused_by_replica": len(outcomes["refused"]) - by_proxy, "refused_by_proxy": by_proxy,
            "refusals_with_retry_after": with_retry_after, "wall_s": round(wall, 2),
            "replica_rss_before_bytes": before["rss_bytes"], "replica": after}


@contextlib.contextmanager
def serving(args: argparse.Namespace) -> Iterator[tuple[Path, list[tuple[bytes, float]], int]]:
    """(bundle, uploads, port) with Ray and Serve up on loopback for the body; both shut down after."""
    import ray
    from ray import serve

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or random_teacher(Path(tmp))
        audio = speech(Path(tmp))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            yield Path(bundle), audio, port
        finally:
            serve.shutdown()
            ray.shutdown()


def speech(tmp: Path) -> list[tuple[bytes, float]]:
    import soundfile as sf

    out = []
    for i, text in enumerate(SENTENCES):
        path = tmp / f"s{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        out.append((path.read_bytes(), sf.info(str(path)).duration))
    return out


def random_teacher(tmp: Path) -> Path:
    import torch

    from common.bundle import save_bundle
    from common.features import FeatureConfig, FeatureExtractor
    from common.models import Seq2Seq
    from common.tokenizer import Tokenizer
    from trainer.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "conf" / "teacher.yaml")
    tokenizer = Tokenizer.train(SENTENCES, recipe.tokenizer.vocab_size, "char")
    torch.manual_seed(0)
    model = Seq2Seq(recipe.model, recipe.features.n_mels, tokenizer.vocab_size)
    save_bundle(tmp / "bundle", model, tokenizer, FeatureExtractor(FeatureConfig()), {"random": True})
    return tmp / "bundle"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
