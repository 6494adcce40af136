"""Load test of the teacher service on loopback: request batching on vs off (max_batch_size=1).

    python bench/serve_load.py [--bundle runs/teacher/bundle] [--requests 128 --clients 32
                               --beam 4 --max-batch-size 32] [--json out.json]

Starts the Serve app on 127.0.0.1 twice (one replica each time), sends the same `--requests`
uploads of real espeak-ng speech from `--clients` concurrent clients (bounded in count and
by `--max-seconds`), and reports throughput and p50/p95/p99 latency. Without `--bundle` it
uses a random-weight bundle of conf/teacher.yaml (such a model rarely ends a hypothesis, so
every request decodes to the maximum length: a heavy, steady load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import tempfile
import time
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
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-wait-ms", type=float, default=50.0)
    ap.add_argument("--max-seconds", type=float, default=240.0, help="per mode; stop sending after")
    ap.add_argument("--json")
    args = ap.parse_args()

    import ray
    from ray import serve

    from services.teacher import Teacher

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or random_teacher(Path(tmp))
        audio = speech(Path(tmp))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        rows = {}
        for mode, size in (("unbatched", 1), ("batched", args.max_batch_size)):
            serve.run(Teacher.options(max_ongoing_requests=max(64, 2 * args.clients)).bind(
                bundle=str(bundle), max_batch_size=size, batch_wait_ms=args.batch_wait_ms),
                name="teacher", route_prefix="/")
            rows[mode] = asyncio.run(load(f"http://127.0.0.1:{port}", audio, args))
            serve.delete("teacher")
        serve.shutdown()
        ray.shutdown()

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
