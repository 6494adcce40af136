"""Training step time of sequence-level KD with k hypotheses vs one target, same student, same batches.

    python bench/kd_step.py --labels L/train [--config conf/student_medium.yaml] [--k 5]
                            [--steps 30 --skip 5 --max-frames 8000] [--json out.json]

Four ways over the same featurised batches of pseudo-label shards, same initial weights:
  one target        the teacher's 1-best only (the cost of ground-truth training)
  k, prefix trie    `SequenceKD` (what `seqkd distill` does): the encoder runs once per
                    utterance, the decoder once per unique prefix of its k hypotheses
  k, flat rows      the encoder once per utterance, each hypothesis an extra decoder row
                    gathered by index (`sequence_kd_loss(share_prefixes=False)`)
  k, copied         the plain way: every hypothesis gets its own copy of the features and
                    its own encoder pass
The goal is k-trie / one-target <= 1.6. Also reported: the labels' unique-node ratio, unique trie
nodes / decoder positions of the flat rows (tokens + </s> of every kept hypothesis).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from common.corpora.manifest import read_table, shard_paths
from common.kd import hypothesis_weights, joint_loss, sequence_kd_loss
from common.models import Seq2Seq
from common.models.trie import build_trie
from trainer.data import Batch, PseudoLabels, bucketed, featurize, tokenizer_of
from trainer.distill import SequenceKD, open_labels
from trainer.loop import lr_factor
from trainer.recipe import load_recipe
from trainer.run import RunPaths, make_front_end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", required=True, help="pseudo-label directory (seqkd label --nbest >= k)")
    ap.add_argument("--config", default="conf/student_medium.yaml")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the timing")
    ap.add_argument("--max-frames", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a Train worker's CPUs)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.config, {"optim": {"max_frames": args.max_frames}})
    labels = open_labels(args.labels)
    with tempfile.TemporaryDirectory() as tmp:
        front = make_front_end(recipe, shard_paths(labels.path), RunPaths(Path(tmp)), labels.tokenizer)
    table = featurize(read_table(labels.path, ["utt_id", "audio", "text", "hyps"]), front,
                      PseudoLabels(k=args.k))
    opt = recipe.optim
    pools = [table.slice(i, opt.bucket_utts) for i in range(0, table.num_rows, opt.bucket_utts)]
    batches = list(bucketed(pools, opt.max_frames, recipe.features.n_mels,
                            random.Random(f"{opt.seed}:0:0")))[:args.steps]
    hyps_per_utt = sum(len(h) for b in batches for h in b.hyps) / sum(len(b.hyps) for b in batches)
    kd = SequenceKD()
    one, trie, flat, copied = ("one target (1-best)", f"k={args.k}, prefix trie (ours)",
                               f"k={args.k}, flat rows, shared encoder", f"k={args.k}, encoder per hypothesis")
    ways = {
        one: lambda model, b: kd.loss(model, b.feats, one_best(b)),
        trie: lambda model, b: kd.loss(model, b.feats, b),
        flat: lambda model, b: flat_loss(kd, model, b),
        copied: copied_loss,
    }
    step_s = {name: time_steps(recipe, front, batches, loss, args.skip) for name, loss in ways.items()}
    base = step_s[one]
    nodes = unique_node_ratio(batches)
    params = Seq2Seq(recipe.model, recipe.features.n_mels, labels.tokenizer.vocab_size).num_params()
    out = Table(title=f"KD training step, {recipe.name} ({params / 1e6:.2f}M params), {len(batches) - args.skip} "
                      f"timed steps, max_frames {args.max_frames}, {hyps_per_utt:.2f} hyps/utt, unique trie "
                      f"nodes / positions {nodes:.3f}, {args.threads} thread(s)")
    for col in ["targets", "s/step", "vs one target"]:
        out.add_column(col, justify="right")
    for name, s in step_s.items():
        out.add_row(name, f"{s:.3f}", f"{s / base:.2f}x")
    Console().print(out)
    result = {"config": args.config, "params": params, "k": args.k, "hyps_per_utt": round(hyps_per_utt, 3),
              "unique_node_ratio": round(nodes, 4),
              "steps": len(batches), "skip": args.skip, "max_frames": args.max_frames,
              "threads": args.threads, "step_s": {k: round(v, 4) for k, v in step_s.items()},
              "ratio": round(step_s[trie] / base, 3), "ratio_flat": round(step_s[flat] / base, 3),
              "ratio_copied": round(step_s[copied] / base, 3),
              "trie_vs_flat": round(step_s[trie] / step_s[flat], 3)}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def one_best(batch: Batch) -> Batch:
    return replace(batch, hyps=[h[:1] for h in batch.hyps], hyp_logps=[p[:1] for p in batch.hyp_logps])


def flat_loss(kd: SequenceKD, model: Seq2Seq, batch: Batch) -> dict[str, torch.Tensor]:
    """`SequenceKD` before the trie: the encoder shared, every hypothesis its own decoder row."""
    hyps, weights, ctc, _ = kd.targets(batch)
    return sequence_kd_loss(model, batch.feats, batch.lens, hyps, weights, ctc, share_prefixes=False)


def unique_node_ratio(batches: list[Batch]) -> float:
    """Unique prefix-trie nodes / decoder positions (tokens + </s>) over the batches' hypotheses:
    the share of the flat rows' decoder steps the trie still runs."""
    nodes = positions = 0
    for b in batches:
        targets = [t for h in b.hyps for t in h]
        nodes += build_trie(targets, [u for u, h in enumerate(b.hyps) for _ in h], torch.device("cpu")).nodes
        positions += sum(len(t) + 1 for t in targets)
    return nodes / positions


def copied_loss(model: Seq2Seq, batch: Batch) -> dict[str, torch.Tensor]:
    """The plain way: features repeated per hypothesis, one encoder pass per row."""
    owner = [u for u, h in enumerate(batch.hyps) for _ in h]
    index = torch.tensor(owner)
    weights = [w for logp in batch.hyp_logps for w in hypothesis_weights(logp)]
    scale = len(owner) / len(batch.hyps)   # joint_loss divides by the rows here; KD by utterances
    targets = [t for h in batch.hyps for t in h]
    out = model(batch.feats.index_select(0, index), batch.lens.index_select(0, index), targets)
    return {"loss": joint_loss(out, targets, model.cfg, weights=[w * scale for w in weights],
                               ctc_targets=[batch.hyps[u][0] for u in owner]).loss}


def time_steps(recipe, front, batches: list[Batch], loss_fn, skip: int) -> float:
    """Seconds per optimizer step (forward, backward, clip, AdamW) after `skip` warm-up steps."""
    opt = recipe.optim
    torch.manual_seed(opt.seed)
    model = Seq2Seq(recipe.model, recipe.features.n_mels, tokenizer_of(front).vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, opt.warmup_steps))
    model.train()
    began = time.perf_counter()
    for step, batch in enumerate(batches, start=1):
        if step == skip + 1:
            began = time.perf_counter()
        loss = loss_fn(model, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
        optimizer.step()
        schedule.step()
    return (time.perf_counter() - began) / max(1, len(batches) - skip)


if __name__ == "__main__":
    main()
