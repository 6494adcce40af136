"""The per-worker training loop that Ray Train runs on every worker (`trainer.run.trainer_class`).

One loop trains teachers and baselines on ground truth (`GroundTruth`) and students on the
teacher's N-best (`trainer.distill.SequenceKD`, passed in the config's "parts"). It is
deterministic for a seed: batches come in manifest order cut into seeded length buckets, and
the RNG is reseeded every step, so a run resumed from a checkpoint continues the exact loss
curve of an uninterrupted one.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from common.beam_search import BeamConfig, beam_search
from common.bundle import save_bundle
from common.features import SpecAugment
from common.kd import model_loss
from common.metrics import error_rates
from common.models import Seq2Seq
from trainer.data import (Batch, FeatureCache, FrontEnd, bucketed, collate, started, tokenizer_of,
                          training_pools, warm_up_featurizer)
from trainer.objective import Objective
from trainer.recipe import Recipe, recipe_from_dict

FAIL_ENV = "SEQKD_FAIL_AT_STEP"   # fault injection for tests: crash once after this step


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint as progress.json."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0         # batches of `epoch` already trained
    best_dev_wer: float = math.inf
    best_step: int = 0
    best_epoch: int = 0
    stopped_early: bool = False     # optim.patience epochs passed without a better dev WER
    history: list[dict] = field(default_factory=list)   # dev results per epoch


def lr_factor(step: int, warmup: int) -> float:
    """Linear warm-up to 1 at `warmup`, then 1/sqrt decay (Vaswani et al.)."""
    step = max(step, 1)
    return min(step / warmup, math.sqrt(warmup / step))


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    recipe: Recipe = recipe_from_dict(config["recipe"])
    parts = ray.get(config["parts"])   # see trainer.run.make_trainer
    front: FrontEnd = parts["front"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    opt_cfg = recipe.optim
    device = ray.train.torch.get_device()
    if rank == 0:
        warm_up_featurizer()
    # The optimizer's first use imports torch._dynamo, 1.3 s of CPU. Imported now, that overlaps the
    # wait for Ray Train's dataset manager in get_dataset_shard; imported at the optimizer, it put
    # the first step 0.8 s later on 2 cores (measured).
    importlib.import_module("torch._dynamo")

    train_shard = ray.train.get_dataset_shard("train")
    restored = ray.train.get_checkpoint()
    # a new run's first pass starts streaming while the model is built
    first_pass = None if restored is not None else \
        started(training_pools(train_shard, opt_cfg.bucket_utts))
    dev = DevSet(ray.train.get_dataset_shard("dev"), front) if rank == 0 and config.get("has_dev") \
        else None
    t = _Trainee.build(recipe, tokenizer_of(front).vocab_size, restored, device)
    objective: Objective = parts["objective"] or GroundTruth()

    fail_marker = Path(config["run_dir"], ".fault_injected")
    max_steps = opt_cfg.max_steps or math.inf
    window = _Window()
    cache = FeatureCache(recipe.data.cache_mb << 20)
    threads = recipe.scaling.cpu_threads or _cores_per_worker(ctx.get_local_world_size())
    progress = t.progress

    def checkpoint(metrics: dict, name: str) -> None:
        _report(metrics, name, t.core, front, progress, t.best_state, t.optimizer, t.schedule, t.scaler,
                rank, config)

    stopped = progress.stopped_early
    while progress.epoch < opt_cfg.epochs and not stopped:
        rng = random.Random(f"{opt_cfg.seed}:{progress.epoch}:{rank}")
        short_first = progress.epoch < opt_cfg.short_first_epochs
        pools = _epoch_pools(cache, first_pass or (lambda: training_pools(train_shard, opt_cfg.bucket_utts)),
                             threads, short_first)
        first_pass = None
        batches = objective.batches(pools, opt_cfg.max_frames, recipe.features.n_mels,
                                    None if short_first else rng)
        for _ in range(progress.batch_in_epoch):   # resuming mid-epoch: skip what was trained
            next(batches, None)
        for batch in _in_step(batches, world, device):
            losses, grad_norm = t.step(objective, batch, opt_cfg, world, rank)
            window.add(batch, losses, grad_norm)
            _inject_fault(progress.step, fail_marker)
            stopped = progress.step >= max_steps
            if progress.step % opt_cfg.log_every == 0 or stopped:
                metrics = {"kind": "train", "step": progress.step, "epoch": progress.epoch,
                           "lr": t.schedule.get_last_lr()[0], **window.flush(world, device)}
                if progress.step % opt_cfg.checkpoint_every == 0 and not stopped:
                    checkpoint(metrics, f"step-{progress.step:08d}")
                else:
                    ray.train.report(metrics)
            if stopped:
                break
        epoch_done = not stopped
        if epoch_done:
            # read on, untrained, the pools this worker had beyond the others' (_in_step stops at the
            # first to run out), so its pass is cached whole like theirs; else it streams the next
            # epoch from a split the others, replaying, never read again, and waits for ever
            for _ in pools:
                pass
            progress.epoch += 1
            epoch_steps, progress.batch_in_epoch = progress.batch_in_epoch, 0
        dev_began = time.perf_counter()
        scores = t.score_dev(dev, opt_cfg) if dev is not None else {}
        stopped = stopped or progress.stopped_early
        timing = {"dev_s": round(time.perf_counter() - dev_began, 2)} if scores else {}
        # batches per epoch are fixed (only their order is shuffled): the driver's bar learns the run's length
        counted = {"epoch_steps": epoch_steps} if epoch_done else {}
        checkpoint({"kind": "epoch", "step": progress.step, "epoch": progress.epoch, **scores,
                    **timing, **counted}, f"epoch-{progress.epoch:04d}-step-{progress.step:08d}")
    return {"steps": progress.step, "epochs": progress.epoch, "best_dev_wer": progress.best_dev_wer,
            "best_step": progress.best_step, "stopped_early": progress.stopped_early}


def _inject_fault(step: int, marker: Path) -> None:
    """For tests: once, after step $SEQKD_FAIL_AT_STEP, the worker dies without warning, as a
    preempted node would."""
    fail_at = int(os.environ.get(FAIL_ENV, "0"))
    if fail_at and step == fail_at and not marker.exists():
        marker.write_text(str(step))
        os._exit(1)


def _epoch_pools(cache: FeatureCache, stream, threads: int, short_first: bool):
    """One epoch's pools of featurised utterances: streamed (and cached) on the first pass,
    replayed from the cache after it. `stream` is the first pass already started, or a
    function that starts one."""
    if not cache.ready:
        stream = stream() if callable(stream) else stream
        # featurising first pays when the cached epoch then trains on more threads than the one
        # the worker has beside the data tasks, and a short-first epoch needs the whole pass;
        # else training overlaps the stream
        prefill = short_first or threads > torch.get_num_threads()
        pools = cache.prefill(stream) if prefill else cache.record(stream)
    if cache.ready:   # no more data tasks on this node: the worker takes its share of the cores
        torch.set_num_threads(threads)
        pools = cache.replay()
        if short_first:   # the whole pass as one pool (over the cache's limit: pool by pool)
            pools = iter([pa.concat_tables(list(pools))])
    return pools


@dataclass
class _Trainee:
    """The model and what updates it, built fresh (the seed's weights) or from a checkpoint."""

    model: torch.nn.Module         # wrapped for DDP where there are several workers
    core: Seq2Seq                  # the model itself
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    augment: SpecAugment
    device: torch.device
    progress: Progress
    best_state: dict[str, torch.Tensor] | None = None

    @classmethod
    def build(cls, recipe: Recipe, vocab_size: int, restored, device: torch.device) -> "_Trainee":
        opt_cfg = recipe.optim
        torch.manual_seed(opt_cfg.seed)   # the same initial weights on every worker and every run
        model = Seq2Seq(recipe.model, recipe.features.n_mels, vocab_size)
        progress, best_state, train_state = Progress(), None, None
        if restored is not None:
            with restored.as_directory() as ckpt:
                model.load_state_dict(load_file(os.path.join(ckpt, "bundle", "model.safetensors")))
                progress = Progress(**json.loads(Path(ckpt, "progress.json").read_text()))
                train_state = torch.load(os.path.join(ckpt, "train_state.pt"), weights_only=True)
                if Path(ckpt, "best", "model.safetensors").exists():
                    best_state = load_file(os.path.join(ckpt, "best", "model.safetensors"))
        model = ray.train.torch.prepare_model(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, opt_cfg.warmup_steps))
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        if train_state is not None:
            optimizer.load_state_dict(train_state["optimizer"])
            schedule.load_state_dict(train_state["schedule"])
            scaler.load_state_dict(train_state["scaler"])
        augment = SpecAugment(recipe.specaugment).to(device)
        augment.train(opt_cfg.specaugment)
        return cls(model, getattr(model, "module", model), optimizer, schedule, scaler, augment, device,
                   progress, best_state)

    def step(self, objective, batch: Batch, opt_cfg, world: int, rank: int) -> tuple[dict, float]:
        """One optimizer step on `batch` (mixed precision on a GPU); the losses and grad norm."""
        self.model.train()
        torch.manual_seed(opt_cfg.seed * 1_000_003 + self.progress.step * world + rank)
        feats = self.augment(batch.feats.to(self.device), batch.lens.to(self.device))
        use_amp = self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=use_amp):
            losses = objective.loss(self.model, feats, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), opt_cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.progress.step += 1
        self.progress.batch_in_epoch += 1
        return losses, float(grad_norm)

    def score_dev(self, dev: "DevSet", opt_cfg) -> dict:
        """Dev WER after an epoch: the best weights kept, and `progress.stopped_early` set when
        `patience` epochs passed without a better one."""
        scores = dev.evaluate(self.core, opt_cfg.dev_beam, self.device)
        p = self.progress
        if scores:
            p.history.append({"epoch": p.epoch, "step": p.step, **scores})
            if scores["dev_wer"] < p.best_dev_wer:
                p.best_dev_wer, p.best_step, p.best_epoch = scores["dev_wer"], p.step, p.epoch
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.core.state_dict().items()}
            elif opt_cfg.patience and p.epoch - p.best_epoch >= opt_cfg.patience:
                p.stopped_early = True
        return scores


def _cores_per_worker(local_workers: int) -> int:
    """This node's cores (its CPU affinity) shared among the training workers on it.

    While Ray Data featurises, a worker keeps the one thread Ray gives it; once epochs replay
    from the feature cache, nothing else runs on the node and the idle cores can train."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, local_workers))


class GroundTruth(Objective):
    """Joint CTC-attention loss on the human transcript (`common.kd.joint_loss` with no teacher)."""

    def batches(self, pools, max_frames: int, n_mels: int, rng: random.Random | None):
        return bucketed(pools, max_frames, n_mels, rng)

    def loss(self, model: torch.nn.Module, feats: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        out = model_loss(model, feats, batch.lens.to(feats.device), batch.targets)
        tokens = sum(len(t) + 1 for t in batch.targets)   # + </s>
        return {"loss": out.loss, "att": out.att.detach(), "ctc": out.ctc.detach(),
                "att_per_token": out.att.detach() * len(batch.targets) / tokens,
                "acc": torch.tensor(out.acc)}


def _in_step(batches, world: int, device: torch.device):
    """Yield batches while every worker still has one, so DDP's collectives never hang."""
    for batch in batches:
        if world > 1 and not _all_have(True, device):
            return
        yield batch
    if world > 1:
        _all_have(False, device)


def _all_have(have: bool, device: torch.device) -> bool:
    flag = torch.tensor([1 if have else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class _Window:
    """Sums over the steps since the last report: losses, utterances, frames, time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.began, self.steps, self.utts, self.frames = time.perf_counter(), 0, 0, 0
        self.sums: dict[str, float] = {}

    def add(self, batch: Batch, losses: dict[str, torch.Tensor], grad_norm: float) -> None:
        self.steps += 1
        self.utts += len(batch.utt_ids)
        self.frames += batch.frames
        for k, v in {**{k: float(v.detach()) for k, v in losses.items()}, "grad_norm": grad_norm}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def flush(self, world: int, device: torch.device) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.began, 1e-9)
        utts, frames = self.utts, self.frames
        if world > 1:
            t = torch.tensor([utts, frames], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            utts, frames = int(t[0]), int(t[1])
        out = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
        out.update(utts_per_s=utts / elapsed, frames_per_s=frames / elapsed, utts=utts)
        self.reset()
        return out


class DevSet:
    """The dev set, featurised once and kept on the worker: it is small and read every epoch.

    It is read whole at the first evaluation. Started with the run (its first batch fetched at
    once, the rest at the evaluation), its stream stayed open beside the first pass's through the
    whole first epoch, two Ray Data executions in the worker at once: two-epoch demo runs with dev
    took 50.7-51.5 s from fit() to their end, against 39.7-43.5 s read at the first evaluation
    (3 alternated runs each, 2 cores)."""

    def __init__(self, shard, front: FrontEnd) -> None:
        self.front = front
        self.shard = shard
        self.batches: list[Batch] | None = None

    @torch.no_grad()
    def evaluate(self, model: Seq2Seq, beam: int, device: torch.device) -> dict[str, float]:
        """Dev loss (teacher forcing on the transcript, whatever the training targets) and WER/CER
        of a small joint CTC-attention beam search.

        Joint decoding at the training CTC weight: a young attention decoder alone tends to loop
        until the length limit, and a dev WER of such loops would pick the wrong best bundle.
        """
        if self.batches is None:
            self.batches = [collate(rows, self.front.features.n_mels)
                            for rows in self.shard.iter_batches(batch_size=16, batch_format="pyarrow")]
        model.eval()
        tokenizer = tokenizer_of(self.front)
        refs, hyps, loss_sum, n = [], [], 0.0, 0
        cfg = BeamConfig(beam=beam, ctc_weight=model.cfg.ctc_weight)
        for batch in self.batches:
            feats, lens = batch.feats.to(device), batch.lens.to(device)
            loss_sum += float(GroundTruth().loss(model, feats, batch)["loss"]) * len(batch.utt_ids)
            n += len(batch.utt_ids)
            enc, enc_lens = model.encode(feats, lens)
            for nbest, ref in zip(beam_search(model, enc, enc_lens, cfg), batch.texts):
                refs.append(ref)
                hyps.append(tokenizer.decode(nbest[0].tokens))
        if not n:
            return {}
        rates = error_rates(refs, hyps)
        return {"dev_loss": loss_sum / n, "dev_wer": rates.wer, "dev_cer": rates.cer, "dev_utts": n}


def _report(metrics: dict, name: str, model: Seq2Seq, front: FrontEnd, progress: Progress,
            best_state: dict[str, torch.Tensor] | None, optimizer, schedule, scaler, rank: int,
            config: dict) -> None:
    """Report with a checkpoint: current bundle, best bundle, optimizer state, progress."""
    if rank != 0:
        ray.train.report(metrics)   # a collective: every worker reports, rank 0 checkpoints
        return
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, features = tokenizer_of(front), front.extractor()
        meta = {"recipe": config["recipe"].get("name", ""), "step": progress.step}
        save_bundle(Path(tmp, "bundle"), model, tokenizer, features, meta)
        if best_state is not None:
            current = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best_state)
            save_bundle(Path(tmp, "best"), model, tokenizer, features,
                        {**meta, "step": progress.best_step, "dev_wer": progress.best_dev_wer})
            model.load_state_dict(current)
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "scaler": scaler.state_dict()}, Path(tmp, "train_state.pt"))
        Path(tmp, "progress.json").write_text(json.dumps(progress.__dict__))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=name)
