"""The driver of a training run: front end, Ray Train launch, progress, the final bundle.

A run directory holds everything of one run:
  recipe.yaml        the validated recipe, overrides applied
  frontend/          tokenizer.model + cmvn.safetensors, fixed at the start (resume reuses them)
  ray/train/         Ray Train's storage: checkpoints (bundle/, best/, optimizer state)
  metrics.jsonl      one JSON object per report (train steps, dev evaluations)
  bundle/            the final model: the best checkpoint by dev WER (or the last, without dev)
Resuming is Ray Train's own restoration: the same storage path and run name.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
import yaml
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from common.audio import load_audio
from common.corpora.manifest import shard_paths
from common.features import CMVN, CMVNAccumulator, FeatureExtractor
from common.tokenizer import Tokenizer
from common.text import target_text
from trainer.data import FrontEnd, PseudoLabels, feature_dataset
from trainer.objective import Objective
from trainer.loop import FAIL_ENV, train_loop_per_worker
from trainer.metrics_log import MetricsLog
from trainer.recipe import Recipe, recipe_from_dict

RUN_NAME = "train"


def trainer_class(num_workers: int, use_gpu: bool) -> type[DataParallelTrainer]:
    """TorchTrainer for peers or a GPU; Ray Train's plain DataParallelTrainer for a lone CPU worker.

    TorchTrainer's backend sets up torch.distributed among the workers and a worker's CUDA device;
    a lone CPU worker needs neither (the loop's collectives only run with peers). Its backend also
    makes Ray Train's controller import torch before it starts the worker (an empty run: 9.2-10.0 s
    from fit() to its end with it, 6.2-7.0 s without). With the config and callbacks also kept
    torch-free (see `make_trainer`), the controller's CPU in a one-epoch demo run fell from 4.6 to
    1.7 s, and fit() to the loop's launch from 8.6 to 8.0 s (medians of 4 alternated runs, 2 cores)."""
    return TorchTrainer if num_workers > 1 or use_gpu else DataParallelTrainer


def poll_workers_often() -> None:
    """Have Ray Train's controller read the workers' reports every 0.25 s (a value the user set wins).

    The controller takes one report off each worker per poll, every 2 s by default, and a worker's
    `ray.train.report` waits while its previous report is still unread: 10 reports in a row took
    18 s (measured), so training that reports more often than every 2 s ran at the pace of the
    polls, and an epoch's checkpoint report waited up to 2 s behind the last step report. Polled
    every 0.25 s the same 10 reports take 2.3 s; the polls cost no measurable training time (0.1 s
    polls cost 15%). Set before a trainer starts, Ray Train passes it on to its controller."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


class RunError(ValueError):
    """A run that cannot start or finish: the message says what to do."""


def require_cpus(recipe: Recipe) -> None:
    """Refuse, on a Ray of fixed size, a CPU run it can never start.

    Each CPU worker holds `scaling.cpus_per_worker` CPUs for the whole run, and Ray Data's
    featurising tasks ask for one CPU each beside them: with less, the first batch never comes
    and the run waits without a word (`--num-cpus 1` with the default recipe did). Only for a
    cluster that no autoscaler grows: there the missing CPUs may be on their way."""
    resources, s = ray.cluster_resources(), recipe.scaling
    if resources.get("GPU", 0) > 0 or s.use_gpu is True:
        return
    need, have = s.num_workers * s.cpus_per_worker + 1, resources.get("CPU", 0)
    if have < need:
        raise RunError(f"this Ray has {have:g} CPUs and the run needs {need:g}: {s.num_workers} "
                       f"worker(s) x {s.cpus_per_worker:g} (scaling.cpus_per_worker) + 1 for the "
                       "featurising tasks; give it more (--num-cpus) or lower scaling.cpus_per_worker")


@dataclass
class RunPaths:
    root: Path

    @property
    def storage(self) -> Path:
        return self.root / "ray"

    @property
    def frontend(self) -> Path:
        return self.root / "frontend"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    def started(self) -> bool:
        return (self.storage / RUN_NAME).exists()


def make_front_end(recipe: Recipe, shards: list[Path], paths: RunPaths,
                   tokenizer: Tokenizer | None = None) -> FrontEnd:
    """Tokenizer and CMVN of a run, made once and stored so that a resumed run uses the same."""
    tok_path, cmvn_path = paths.frontend / "tokenizer.model", paths.frontend / "cmvn.safetensors"
    if tok_path.exists() and cmvn_path.exists():
        return _front(recipe, Tokenizer.load(tok_path), CMVN.load(cmvn_path))
    tokenizer = tokenizer or train_tokenizer(recipe, shards)
    cmvn = estimate_cmvn(shards, recipe)
    paths.frontend.mkdir(parents=True, exist_ok=True)
    tokenizer.save(tok_path)
    cmvn.save(cmvn_path)
    return _front(recipe, tokenizer, cmvn)


def train_tokenizer(recipe: Recipe, shards: list[Path]) -> Tokenizer:
    """The recipe's sentencepiece model, learnt from the training transcripts as it trains on them."""
    texts = [t for s in shards for t in pq.read_table(s, columns=["text"]).column("text").to_pylist()]
    drop = recipe.data.remove_non_language
    return Tokenizer.train([target_text(t, drop) for t in texts], recipe.tokenizer.vocab_size,
                           recipe.tokenizer.model_type)


def _front(recipe: Recipe, tokenizer: Tokenizer, cmvn: CMVN) -> FrontEnd:
    return FrontEnd(tokenizer.proto, recipe.features, tuple(cmvn.mean.tolist()),
                    tuple(cmvn.std.tolist()), recipe.data.remove_non_language,
                    recipe.data.max_duration_s)


def estimate_cmvn(shards: list[Path], recipe: Recipe) -> CMVN:
    """Global mean/std over the first `cmvn_utts` training utterances (spread over the shards)."""
    extractor = FeatureExtractor(recipe.features)
    stats = CMVNAccumulator(recipe.features.n_mels)
    per_shard = max(1, recipe.data.cmvn_utts // len(shards))
    for shard in shards:
        for audio in pq.read_table(shard, columns=["audio"]).column("audio").to_pylist()[:per_shard]:
            stats.add(extractor.raw(load_audio(audio, sample_rate=recipe.features.sample_rate)))
    return stats.result()


def train(recipe: Recipe, train_dir: str | Path | list, dev_dir: str | Path | None, out: str | Path,
          resume: bool = False, objective: Objective | None = None, tokenizer: Tokenizer | None = None,
          pseudo: PseudoLabels | None = None, extra_meta: dict | None = None) -> dict[str, Any]:
    """Train with Ray Train on the cluster `ray.init` connected to; return the run summary.

    Ground truth by default; sequence-level KD (trainer.distill) passes pseudo-label shards as
    `train_dir`, the hypotheses to keep (`pseudo`), its `objective` and the teacher's tokenizer.
    `train_dir` may be a list of directories, read as one training set.
    """
    paths = RunPaths(Path(out).resolve())
    train_dirs = [Path(d) for d in (train_dir if isinstance(train_dir, (list, tuple)) else [train_dir])]
    if paths.started() and not resume:
        raise RunError(f"{paths.root} already holds a training run: pass --resume to continue it, "
                       f"or choose a new --out")
    if resume and not paths.started():
        raise RunError(f"nothing to resume in {paths.root}: no training run was started there")
    if resume:
        saved = recipe_from_dict(yaml.safe_load((paths.root / "recipe.yaml").read_text()))
        if saved.model != recipe.model or saved.features != recipe.features:
            raise RunError(f"{paths.root}: the recipe's model or features differ from the run "
                           f"being resumed")
    shards = [s for d in train_dirs for s in shard_paths(d)]   # fail now, with the path, if no data
    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    front = make_front_end(recipe, shards, paths, tokenizer)

    trainer = make_trainer(recipe, paths, front, shards, dev_dir, pseudo, objective)
    began = time.perf_counter()
    with ProgressDisplay(paths.metrics, paths.root.name, estimate_steps(recipe, shards),
                         recipe.optim.epochs, recipe.optim.max_steps):
        result = trainer.fit()
    seconds = time.perf_counter() - began
    if result.checkpoint is None:
        raise RunError(f"training reported no checkpoint; see {paths.metrics}")
    summary = {**(result.return_value or {}), "train_seconds": round(seconds, 1),
               "recipe": recipe.name, "train_data": " ".join(map(str, train_dirs)), "dev_data": str(dev_dir or "")}
    with result.checkpoint.as_directory() as ckpt:
        best = Path(ckpt, "best")
        source = best if best.is_dir() else Path(ckpt, "bundle")
        install_bundle(source, paths.bundle, {**summary, "targets": "gt", **(extra_meta or {})})
    summary["bundle"] = str(paths.bundle)
    return summary


def make_trainer(recipe: Recipe, paths: RunPaths, front: FrontEnd, shards: list[Path],
                 dev_dir: str | Path | None, pseudo: PseudoLabels | None,
                 objective: Objective | None) -> DataParallelTrainer:
    """The Ray Train trainer of a run: its datasets, workers, storage and callbacks."""
    datasets = {"train": feature_dataset([str(p) for p in shards], front, pseudo)}
    if dev_dir is not None:
        datasets["dev"] = feature_dataset([str(p) for p in shard_paths(dev_dir)], front)
    use_gpu = recipe.scaling.use_gpu
    if use_gpu == "auto":
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    exec_opts = ray.data.ExecutionOptions(preserve_order=True)
    # a lone worker reads the training set whole: splitting it one way costs a SplitCoordinator
    # actor, one more process to start on the way to the first batch (2.2 s later, measured)
    split = ["train"] if recipe.scaling.num_workers > 1 else []
    poll_workers_often()
    return trainer_class(recipe.scaling.num_workers, bool(use_gpu))(
        train_loop_per_worker=train_loop_per_worker,
        # Ray Train's controller unpickles this config before it starts the worker: the front end
        # and the objective, classes of torch-importing modules, go as one object ref it passes on
        # unopened (opened there, they cost the controller 2-3 s of CPU on the run's critical path)
        train_loop_config={"recipe": recipe.to_dict(), "has_dev": dev_dir is not None,
                           "run_dir": str(paths.root),
                           "parts": ray.put({"front": front, "objective": objective})},
        scaling_config=ScalingConfig(
            num_workers=recipe.scaling.num_workers, use_gpu=bool(use_gpu),
            resources_per_worker=None if use_gpu else {"CPU": recipe.scaling.cpus_per_worker}),
        run_config=RunConfig(
            name=RUN_NAME, storage_path=str(paths.storage),
            failure_config=FailureConfig(max_failures=recipe.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=3),
            callbacks=[MetricsLog(paths.metrics)],
            worker_runtime_env=_fault_injection_env()),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=split, execution_options=exec_opts),
    )


def _fault_injection_env() -> dict:
    """Pass the test-only fault switch on to the workers when the driver has it set."""
    value = os.environ.get(FAIL_ENV)
    return {"env_vars": {FAIL_ENV: value}} if value else {}


def install_bundle(source: Path, dest: Path, meta: dict) -> None:
    """Copy a checkpoint's bundle into place (temp + rename) with the run's facts in meta.json."""
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    merged = {**json.loads((tmp / "meta.json").read_text()), **meta}
    (tmp / "meta.json").write_text(json.dumps(merged, indent=2, sort_keys=True, default=str))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def estimate_steps(recipe: Recipe, shards: list[Path]) -> int:
    """Optimizer steps the run will take, from the audio's total frames and the frame budget."""
    if recipe.optim.max_steps:
        return recipe.optim.max_steps
    seconds = sum(sum(pq.read_table(s, columns=["duration_s"]).column("duration_s").to_pylist())
                  for s in shards)
    frames = seconds * 1000 / recipe.features.frame_shift_ms
    per_epoch = max(1, int(frames / (0.8 * recipe.optim.max_frames)))   # ~80% of the budget is used
    return per_epoch * recipe.optim.epochs


class ProgressDisplay:
    """A rich progress bar on the driver, fed by metrics.jsonl while `fit()` blocks.

    The total starts as an estimate from the audio's duration (shown with a `~`) and becomes exact
    when the first epoch ends and reports its batch count. Runs that train at once in one process
    (the demo's two students) share one live display, a bar each: rich allows one per console.
    """

    _lock = threading.Lock()
    _shared: Progress | None = None
    _users = 0

    def __init__(self, metrics: Path, name: str, estimate: int, epochs: int,
                 max_steps: int | None) -> None:
        self.metrics, self.name = metrics, name
        self.total, self.exact = estimate, bool(max_steps)
        self.epochs, self.max_steps = epochs, max_steps

    def __enter__(self) -> "ProgressDisplay":
        self.offset = self.metrics.stat().st_size if self.metrics.exists() else 0
        with ProgressDisplay._lock:
            if ProgressDisplay._shared is None:
                ProgressDisplay._shared = Progress(
                    TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn())
                ProgressDisplay._shared.start()
            ProgressDisplay._users += 1
            self.progress = ProgressDisplay._shared
            self.task = self.progress.add_task(self._label(), total=self.total, info="starting Ray Train")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._poll()
        done = self.progress.tasks[self.task].completed if exc[0] is None else None
        if done is not None:   # finished (or stopped early): the bar ends full
            self.exact = True
            self.progress.update(self.task, total=done, description=self._label())
        with ProgressDisplay._lock:
            ProgressDisplay._users -= 1
            if ProgressDisplay._users == 0:
                self.progress.stop()
                ProgressDisplay._shared = None

    def _label(self) -> str:
        return f"{self.name}" if self.exact else f"{self.name} (~total)"

    def _follow(self) -> None:
        while not self.stop.wait(1.0):
            self._poll()

    def _poll(self) -> None:
        if not self.metrics.exists():
            return
        with open(self.metrics) as fh:
            fh.seek(self.offset)
            lines = fh.readlines()
            self.offset = fh.tell()
        for line in lines:
            m = json.loads(line)
            if m.get("kind") == "train":
                info = (f"epoch {m['epoch']} loss {m['loss']:.3f} {m['utts_per_s']:.1f} utts/s "
                        f"{m['frames_per_s']:.0f} frames/s")
            elif m.get("kind") == "epoch":
                if "epoch_steps" in m and not self.exact:
                    self.total = m["epoch_steps"] * self.epochs
                    self.total = min(self.total, self.max_steps) if self.max_steps else self.total
                    self.exact = True
                info = f"epoch {m['epoch']}"
                if "dev_wer" in m:
                    info += (f" dev WER {100 * m['dev_wer']:.2f}% loss {m['dev_loss']:.3f} "
                             f"({m['dev_s']:.1f} s)")
                self.progress.console.print(f"{self.name} step {m['step']}: {info}")
            else:
                continue
            self.total = max(self.total, m["step"])
            self.progress.update(self.task, completed=m["step"], total=self.total, info=info,
                                 description=self._label())
