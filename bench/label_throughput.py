"""Labeling throughput against concurrency and a plain loop, and the driver's memory against corpus size.

    python bench/label_throughput.py --data D/train --bundle runs/teacher/bundle
        [--utts 0 --concurrency 1 2 --rss-utts 2000 20000 --shard-size 1000 --beam 5 --nbest 5
         --topm 8 --batch-size 16 --num-cpus 2 --rss-bundle B --rss-beam K] [--quick] [--json out.json]

  plain       one utterance at a time through the teacher's transcriber (FLAC decode, features,
              beam search) in this process, `--num-cpus` threads: the loop one would write by hand
  ray c=N     `services.labeling.label` with a fixed pool of N teacher actors on a local Ray of
              `--num-cpus` cores (+ 1 logical CPU for the shard readers), on the same utterances
              (`--utts`, 0: all of `--data`): wall time of the whole job, actor start-up
              included; its 1-best texts must equal the loop's
  driver RSS  `seqkd label` as a fresh process (the driver alone: it joins the local Ray above)
              on manifests of `--rss-utts` utterances, built by repeating the rows of `--data`
              under new utterance ids; its peak RSS must stay about flat as the corpus grows. What
              the driver holds does not depend on the model, only on the rows and hypotheses, so
              `--rss-bundle` (a student) and `--rss-beam` (nbest = min(nbest, K)) make 20k
              utterances minutes, not a quarter of an hour, on 2 cores
`--quick` (24 utterances; 48 and 240 for RSS, in shards of 24) checks the script, it measures nothing.
`--bundle` may be any kind of teacher (common/teachers.py): a Whisper CTranslate2 directory is
decoded without what it lacks (CTC weight and top-M forced to 0); `--rss-utts` with no number
skips the driver-RSS runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.beam_search import BeamConfig
from common.corpora.manifest import Utterance, iter_rows
from common.corpora.writer import write_manifest
from common.teachers import teacher_kind
from common.whisper import KIND as WHISPER


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="manifest directory (the utterances to label)")
    ap.add_argument("--bundle", required=True, help="teacher bundle")
    ap.add_argument("--utts", type=int, default=0, help="first N utterances of --data (0: all)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rss-utts", type=int, nargs="*", default=[2000, 20000])
    ap.add_argument("--shard-size", type=int, default=1000, help="of the RSS manifests")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--nbest", type=int, default=5)
    ap.add_argument("--ctc-weight", type=float, default=0.3)
    ap.add_argument("--ctc-window", type=int, default=0, help="CTC window margin in frames (0: exact)")
    ap.add_argument("--topm", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--rss-bundle", help="the model of the driver-RSS runs (default: --bundle)")
    ap.add_argument("--rss-beam", type=int, help="their beam (default: --beam)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 24 utts, small RSS manifests")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.quick:
        args.utts, args.rss_utts, args.shard_size = 24, [48, 240], 24
    if teacher_kind(args.bundle) == WHISPER:   # no CTC head, no per-position distributions
        args.ctc_weight, args.topm = 0.0, 0
    cfg = BeamConfig(beam=args.beam, nbest=args.nbest, ctc_weight=args.ctc_weight, topm=args.topm,
                     ctc_window=args.ctc_window)
    rows = list(iter_rows(args.data))[: args.utts or None]
    audio_s = sum(r["duration_s"] for r in rows)

    import ray

    with tempfile.TemporaryDirectory(prefix="label-bench-") as tmp:
        # eight shards (so eight blocks): each actor of a pool of 2 always has one to work on
        data = repeated(rows, len(rows), Path(tmp, "data"), -(-len(rows) // 8))
        plain_s, plain_texts = plain_loop(args.bundle, rows, cfg, args.num_cpus)
        # one logical CPU more than the cores: the tasks that list and read the shards need one
        # beside a pool of as many actors as cores (they are light; the actors do the work)
        ray.init(address="local", num_cpus=args.num_cpus + 1, include_dashboard=False,
                 log_to_driver=False)
        try:
            runs = {c: ray_run(args.bundle, data, Path(tmp, f"labels-{c}"), cfg, args.batch_size, c)
                    for c in args.concurrency}
            address = ray.get_runtime_context().gcs_address
            rss = [driver_rss(args, rows, n, Path(tmp), address) for n in args.rss_utts]
        finally:
            ray.shutdown()

    differing = sorted({u for _, texts in runs.values() for u in plain_texts
                        if texts[u] != plain_texts[u]})
    methods = {"plain loop": {"seconds": plain_s},
               **{f"ray c={c}": {"seconds": s} for c, (s, _) in runs.items()}}
    for m in methods.values():
        m.update(utts_per_s=round(len(rows) / m["seconds"], 2), rtf=round(m["seconds"] / audio_s, 5),
                 seconds=round(m["seconds"], 2))
    result = {"data": args.data, "bundle": args.bundle, "teacher_kind": teacher_kind(args.bundle),
              "utts": len(rows), "audio_s": round(audio_s, 1),
              "num_cpus": args.num_cpus, "batch_size": args.batch_size, "decode": asdict(cfg),
              "methods": methods, "identical_1best": not differing, "differing_utts": differing,
              "driver_rss": rss,
              "rss_growth": round(rss[-1]["peak_rss_mb"] / rss[0]["peak_rss_mb"], 3) if rss else None}
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if differing:
        sys.exit(f"the 1-best differs from the plain loop's for {len(differing)} utterances: "
                 f"{differing[:10]}")


def repeated(rows: list[dict], n: int, out: Path, shard_size: int) -> Path:
    """A manifest of `n` utterances: the rows over and over, each copy under a new utt_id."""
    jobs = [(f"{rows[i % len(rows)]['utt_id']}-r{i // len(rows):04d}", rows[i % len(rows)])
            for i in range(n)]
    write_manifest(out, jobs, renamed, shard_size=shard_size, workers=1, label=f"{n} utts")
    return out


def renamed(job: tuple[str, dict]) -> Utterance:
    utt_id, row = job
    return Utterance(**{**row, "utt_id": utt_id})


def plain_loop(bundle: str, rows: list[dict], cfg: BeamConfig, threads: int) -> tuple[float, dict]:
    """Seconds and 1-best text per utterance, one utterance per call; the model load is not timed."""
    import torch

    from common.teachers import load_transcriber

    torch.set_num_threads(threads)
    transcriber = load_transcriber(bundle, device="cpu", threads=threads)
    began = time.perf_counter()
    texts = {r["utt_id"]: transcriber.transcribe([r["audio"]], cfg)[0].text for r in rows}
    return time.perf_counter() - began, texts


def ray_run(bundle: str, data: Path, out: Path, cfg: BeamConfig, batch_size: int,
            concurrency: int) -> tuple[float, dict]:
    """Seconds of the whole labeling job and the 1-best text per (original) utterance id."""
    from services.labeling import label

    summary = label(bundle, data, out, cfg, batch_size, concurrency, show_progress=False)
    texts = {r["utt_id"].rsplit("-r", 1)[0]: r["hyps"][0]["text"] if r["hyps"] else ""
             for r in iter_rows(out, ["utt_id", "hyps"])}
    return summary.decode_s, texts


def driver_rss(args: argparse.Namespace, rows: list[dict], n: int, tmp: Path, address: str) -> dict:
    """Peak RSS of `seqkd label` (the driver process only) on a manifest of n utterances."""
    data = repeated(rows, n, tmp / f"rss-{n}", args.shard_size)
    beam = args.rss_beam or args.beam
    command = [sys.executable, "-m", "seqkd", "label", args.rss_bundle or args.bundle, "--data", str(data),
               "--out", str(tmp / f"rss-{n}-labels"), "--beam", str(beam), "--nbest",
               str(min(args.nbest, beam)), "--ctc-weight", str(args.ctc_weight), "--topm", str(args.topm),
               "--ctc-window", str(args.ctc_window),
               "--batch-size", str(args.batch_size), "--concurrency", str(max(args.concurrency)),
               "--address", address, "--json"]
    began = time.perf_counter()
    with open(tmp / f"rss-{n}.log", "w+") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        _, status, usage = os.wait4(proc.pid, 0)   # the rusage of this child alone
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    if proc.returncode:
        sys.exit(f"seqkd label on {n} utterances failed:\n{output[-3000:]}")
    summary = json.loads(output.strip().splitlines()[-1])
    return {"utts": n, "shards": -(-n // args.shard_size), "labelled": summary["utterances"],
            "bundle": args.rss_bundle or args.bundle, "beam": beam,
            "seconds": round(time.perf_counter() - began, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def report(result: dict) -> None:
    console = Console()
    table = Table(title=f"labeling {result['utts']} utts ({result['audio_s']:.0f} s audio), beam "
                        f"{result['decode']['beam']}, nbest {result['decode']['nbest']}, topm "
                        f"{result['decode']['topm']}, {result['num_cpus']} CPUs")
    for col in ["method", "seconds", "utts/s", "RTF", "vs plain loop"]:
        table.add_column(col, justify="right")
    plain = result["methods"]["plain loop"]["seconds"]
    for name, m in result["methods"].items():
        table.add_row(name, f"{m['seconds']:.2f}", f"{m['utts_per_s']:.2f}", f"{m['rtf']:.4f}",
                      f"{plain / m['seconds']:.2f}x")
    console.print(table)
    console.print(f"identical 1-best: {result['identical_1best']}")
    if not result["driver_rss"]:
        return
    rss = Table(title="the labeling driver's peak RSS")
    for col in ["utterances", "shards", "seconds", "peak RSS MB"]:
        rss.add_column(col, justify="right")
    for r in result["driver_rss"]:
        rss.add_row(str(r["utts"]), str(r["shards"]), f"{r['seconds']:.1f}", f"{r['peak_rss_mb']:.0f}")
    console.print(rss)
    console.print(f"peak RSS at {result['driver_rss'][-1]['utts']} / at {result['driver_rss'][0]['utts']} "
                  f"utterances: {result['rss_growth']:.2f}x")


if __name__ == "__main__":
    main()
