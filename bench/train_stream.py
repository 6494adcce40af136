"""Ray Train streaming from a Ray Dataset vs a plain in-memory loop: is the trainer ever starved?

    python bench/train_stream.py --data D/train [--config conf/student_medium.yaml]
                                 [--steps 60 --skip 10 --max-frames 8000] [--json out.json]
    python bench/train_stream.py --whole-run --data D/train [--dev D/dev]
                                 [--config conf/student_small.yaml] [--repeat N] [--json out.json]

Same recipe, same model initialisation, same batches in the same order, the recipe's threads:
  in-memory   every utterance featurised up front into tensors, then a bare PyTorch loop
  ray-train   `trainer.run.train`: Ray Data decodes FLAC and computes features in tasks
              while the Ray Train worker trains on what streams in
Steps mode: step time over steps skip+1..steps (after start-up), from the Train reports.
Whole-run mode: wall time of every epoch of the recipe, start-up included: the plain loop from
its CMVN estimate and featurisation to its last step; `train` from `ray.init` to the installed
bundle (front end, Ray Train and Ray Data start-up, epoch checkpoints), without and (`--dev`)
with the per-epoch dev decode; and the floor under any such run: `ray.init`, a Ray Train run
whose loop does nothing, `ray.shutdown`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from common.corpora.manifest import read_table, shard_paths
from common.features import SpecAugment
from common.models import Seq2Seq
from trainer.data import bucketed, featurize, tokenizer_of
from trainer.loop import GroundTruth, lr_factor
from trainer.recipe import load_recipe
from trainer.run import RunPaths, make_front_end, poll_workers_often, train, trainer_class


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="training manifest directory")
    ap.add_argument("--config", default="conf/student_medium.yaml")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip", type=int, default=10, help="start-up steps left out of the timing")
    ap.add_argument("--max-frames", type=int, default=8000)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--whole-run", action="store_true",
                    help="time whole runs of the recipe's epochs, start-up included")
    ap.add_argument("--dev", help="--whole-run: also time a run with this dev set decoded per epoch")
    ap.add_argument("--repeat", type=int, default=1, help="--whole-run: rounds of every form")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.whole_run:
        return whole_run(args)
    overrides = {"optim": {"max_steps": args.steps, "epochs": 1, "log_every": args.skip,
                           "checkpoint_every": 10 * args.steps, "max_frames": args.max_frames}}
    recipe = load_recipe(args.config, overrides)
    torch.set_num_threads(1)   # a Ray Train worker gets one CPU, so one thread

    with tempfile.TemporaryDirectory() as tmp:
        front = make_front_end(recipe, shard_paths(args.data), RunPaths(Path(tmp, "plain")))
        plain_s, _ = plain_loop(recipe, front, Path(args.data), args.steps, args.skip)
        plain_s /= args.steps - args.skip

        import ray
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        run = Path(tmp, "ray")
        train(recipe, args.data, None, run)
        ray.shutdown()
        reports = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        times = {m["step"]: m["time"] for m in reports if m["kind"] == "train"}
        stream_s = (times[args.steps] - times[args.skip]) / (args.steps - args.skip)

    params = Seq2Seq(recipe.model, recipe.features.n_mels, 40).num_params()
    result = {"config": args.config, "params": params, "steps": args.steps, "skip": args.skip,
              "max_frames": args.max_frames, "num_cpus": args.num_cpus,
              "step_s": {"in_memory": round(plain_s, 4), "ray_train_streaming": round(stream_s, 4)},
              "ratio": round(stream_s / plain_s, 3)}
    table = Table(title=f"training step time, {recipe.name} ({params / 1e6:.2f}M params), "
                        f"steps {args.skip + 1}-{args.steps}, max_frames {args.max_frames}")
    for col in ["loop", "s/step", "vs in-memory"]:
        table.add_column(col, justify="right")
    table.add_row("in-memory tensors", f"{plain_s:.3f}", "1.00x")
    table.add_row("Ray Train + Ray Data streaming", f"{stream_s:.3f}", f"{stream_s / plain_s:.2f}x")
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def whole_run(args: argparse.Namespace) -> None:
    """Every epoch of the recipe, start-up included: a plain loop against `seqkd train`.

    Each of `--repeat` rounds times every form back to back; the table shows the medians and
    each round's ratio, because a 2-core VM drifts by 10-15% between minutes."""
    recipe = load_recipe(args.config)
    poll_workers_often()   # as `train` does, so the floor is its floor
    threads = recipe.scaling.cpu_threads or args.num_cpus
    torch.set_num_threads(threads)
    rounds: list[dict[str, float]] = []
    forms = [("ray_train", None)] + ([("ray_train_dev", args.dev)] if args.dev else [])
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            seconds: dict[str, float] = {}
            began = time.perf_counter()
            front = make_front_end(recipe, shard_paths(args.data), RunPaths(Path(tmp, f"plain{r}")))
            _, steps = plain_loop(recipe, front, Path(args.data), None, 0)
            seconds["plain"] = time.perf_counter() - began
            seconds["ray_train_floor"] = _with_ray(args.num_cpus, lambda: _empty_run(Path(tmp, f"floor{r}")))
            for name, dev in forms:
                summary: dict = {}
                seconds[name] = _with_ray(args.num_cpus, lambda: summary.update(
                    train(recipe, args.data, dev, Path(tmp, f"{name}{r}"))))
                assert summary["steps"] == steps, (summary["steps"], steps)   # the same work
            rounds.append(seconds)

    names = list(rounds[0])
    median = {k: statistics.median(r[k] for r in rounds) for k in names}
    ratios = {k: [round(r[k] / r["plain"], 3) for r in rounds] for k in names if k != "plain"}
    params = Seq2Seq(recipe.model, recipe.features.n_mels, 40).num_params()
    result = {"mode": "whole-run", "config": args.config, "params": params, "steps": steps,
              "epochs": recipe.optim.epochs, "threads": threads, "num_cpus": args.num_cpus,
              "rounds": [{k: round(v, 1) for k, v in r.items()} for r in rounds],
              "seconds": {k: round(v, 1) for k, v in median.items()},
              "ratio": {k: round(statistics.median(v), 3) for k, v in ratios.items()},
              "ratio_per_round": ratios}
    table = Table(title=f"whole training run, {recipe.name} ({params / 1e6:.2f}M params), "
                        f"{recipe.optim.epochs} epochs, {steps} steps, {threads} thread(s), "
                        f"median of {len(rounds)} round(s)")
    for col in ["loop", "s", "vs plain", "each round"]:
        table.add_column(col, justify="right")
    labels = {"plain": "plain loop over features computed up front",
              "ray_train_floor": "Ray start + an empty Ray Train run (the floor of any run)",
              "ray_train": "seqkd train (Ray Train + Ray Data)",
              "ray_train_dev": "seqkd train, dev WER every epoch"}
    for name in names:
        each = " ".join(f"{x:.2f}x" for x in ratios.get(name, []))
        table.add_row(labels[name], f"{median[name]:.1f}", f"{result['ratio'].get(name, 1.0):.2f}x", each)
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def _with_ray(num_cpus: int, work) -> float:
    """Seconds of `work` between Ray's start (as `seqkd train` starts it) and `ray.shutdown`."""
    import ray

    from seqkd.ray_connect import connect

    began = time.perf_counter()
    connect(None, num_cpus)
    work()
    ray.shutdown()
    return time.perf_counter() - began


def _empty_run(storage: Path) -> None:
    """A Ray Train run whose loop does no work: what any run pays (controller, worker, exit),
    under the trainer class `train` picks for the same lone CPU worker."""
    from ray.train import RunConfig, ScalingConfig

    trainer_class(1, False)(_nothing, scaling_config=ScalingConfig(num_workers=1),
                            run_config=RunConfig(name="floor", storage_path=str(storage))).fit()


def _nothing(config: dict) -> None:
    """A Ray Train loop that does no work."""


def plain_loop(recipe, front, data: Path, steps: int | None, skip: int) -> tuple[float, int]:
    """The Ray Train loop's steps over batches featurised before the clock starts: the seconds
    from step skip+1 to the last, and the steps taken (`steps` None: the recipe's epochs)."""
    table = featurize(read_table(data, ["utt_id", "audio", "text"]), front)
    opt = recipe.optim
    pools = [table.slice(i, opt.bucket_utts) for i in range(0, table.num_rows, opt.bucket_utts)]
    torch.manual_seed(opt.seed)
    model = Seq2Seq(recipe.model, recipe.features.n_mels, tokenizer_of(front).vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, opt.warmup_steps))
    augment, objective = SpecAugment(recipe.specaugment), GroundTruth()
    augment.train(opt.specaugment)
    model.train()
    began, step = time.perf_counter(), 0
    for epoch in range(opt.epochs):
        for batch in bucketed(pools, opt.max_frames, recipe.features.n_mels,
                              random.Random(f"{opt.seed}:{epoch}:0")):
            if step == skip:
                began = time.perf_counter()
            torch.manual_seed(opt.seed * 1_000_003 + step)
            loss = objective.loss(model, augment(batch.feats, batch.lens), batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            if step == steps:
                return time.perf_counter() - began, step
    return time.perf_counter() - began, step


if __name__ == "__main__":
    main()
