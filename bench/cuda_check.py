"""The model code on a GPU: exactness checks and the KD step's cost, for a lent CUDA machine.

    python bench/cuda_check.py [--device cuda] [--steps 30 --skip 5] [--json out.json]

A GPU machine lent to this project has torch but not Ray or PyAV, so this reads no corpus: it
imports only the models, the KD loss, beam search and the recipe loader, and times steps on
synthetic batches shaped like the demo's (80 mels, 150-300 frames, hypotheses of 18-31 tokens
whose 5-best share prefixes). It checks, per decoder family (a recipe's model, random weights):
  trie == flat      every gradient of the sequence-KD loss, prefix trie vs flat rows, on the device
                    (largest difference over the largest gradient)
  device == CPU     the same loss and gradients computed on CPU (TF32 off)
  beam search       batched N-best on the device == one utterance at a time == CPU
and times a training step (forward, backward, AdamW) of the recipes' students and teacher for
one target and k=5 targets, each by flat rows and by the trie. The CPU's figures are
`bench/kd_step.py`'s, on the real labels.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from common.beam_search import BeamConfig, beam_search
from common.kd import sequence_kd_loss
from common.models import Seq2Seq
from trainer.recipe import load_recipe

FAMILIES = {"pblstm-lstm": "conf/student_small.yaml", "conformer-transformer": "conf/teacher_conformer.yaml"}
RECIPES = ["conf/student_small.yaml", "conf/student_large.yaml", "conf/teacher.yaml"]
WAYS = [("one target, flat", 1, False), ("one target, trie", 1, True),
        ("k=5, flat rows", 5, False), ("k=5, prefix trie", 5, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the timing")
    ap.add_argument("--json")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    checks = {family: exactness(family, device) for family in FAMILIES}
    timing = {f"{recipe} B={b}": {way: step_seconds(recipe, k, share, b, device, args.steps, args.skip)
                                  for way, k, share in WAYS}
              for recipe in RECIPES for b in (32, 128)}
    console = Console()
    table = Table(title=f"exactness on {name}")
    for col in ["family", "trie vs flat: max |grad diff| / max |grad|", f"{device.type} vs CPU", "beam search equal"]:
        table.add_column(col, justify="right")
    for family, c in checks.items():
        table.add_row(family, f"{c['trie_vs_flat_grad']:.1e}", f"{c['device_vs_cpu_grad']:.1e}",
                      str(c["beam_batched_eq_single"] and c["beam_eq_cpu"]))
    console.print(table)
    table = Table(title=f"KD training step on {name}, s/step (mean of {args.steps - args.skip} steps)")
    for col in ["recipe, utterances", *(w for w, _, _ in WAYS)]:
        table.add_column(col, justify="right")
    for key, t in timing.items():
        table.add_row(key.replace("conf/", "").replace(".yaml", ""), *(f"{t[w]:.4f}" for w, _, _ in WAYS))
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__,
                                               "exactness": checks, "step_s": timing}, indent=2))


def recipe_model(recipe: str) -> Seq2Seq:
    """The recipe's model with seeded random weights, its mels in, 40 tokens out (the demo's)."""
    loaded = load_recipe(recipe)
    torch.manual_seed(0)
    return Seq2Seq(loaded.model, loaded.features.n_mels, 40)


def nbest(rng: random.Random, utterances: int, k: int, vocab: int, tail: int = 0) -> list[list[list[int]]]:
    """Per utterance, k hypotheses cut from one random sequence with random endings, and one
    that is a prefix of the others (the shape of beam-search N-best lists)."""
    out = []
    for _ in range(utterances):
        base = [rng.randint(3, vocab - 1) for _ in range(rng.randint(3, 12))]
        hyps = [base[:rng.randint(0, len(base))] + [rng.randint(3, vocab - 1) for _ in range(rng.randint(0, 4))]
                for _ in range(k)] + [base[:2]]
        out.append([h + [rng.randint(3, vocab - 1) for _ in range(tail)] for h in hyps])
    return out


def kd_loss(model: Seq2Seq, feats: torch.Tensor, lens: torch.Tensor, hyps: list[list[list[int]]],
            share: bool) -> torch.Tensor:
    weights = [[1.0 / len(h)] * len(h) for h in hyps]
    return sequence_kd_loss(model, feats, lens, hyps, weights, [h[0] for h in hyps], share_prefixes=share)["loss"]


def gradients(model: Seq2Seq, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad.detach().cpu().clone() for p in model.parameters() if p.grad is not None]


def exactness(family: str, device: torch.device) -> dict:
    """Trie vs flat on the device, device vs CPU, batched vs single beam search."""
    model = recipe_model(FAMILIES[family]).train()
    for module in model.modules():   # no dropout, but train mode (cuDNN's RNN backward needs it)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(module, (torch.nn.LSTM, torch.nn.MultiheadAttention)):
            module.dropout = 0.0
    rng = random.Random(0)
    lens = torch.tensor([rng.randint(60, 200) for _ in range(6)])
    feats = torch.randn(6, int(lens.max()), 80)
    hyps = nbest(rng, 6, 5, 40)
    cpu = gradients(model, kd_loss(model, feats, lens, hyps, True))
    model.to(device)
    trie = gradients(model, kd_loss(model, feats.to(device), lens.to(device), hyps, True))
    flat = gradients(model, kd_loss(model, feats.to(device), lens.to(device), hyps, False))
    model.eval()
    config = BeamConfig(beam=5, nbest=3, ctc_weight=0.3)

    def decode(m: Seq2Seq, f: torch.Tensor, n: torch.Tensor) -> list[list[list[int]]]:
        with torch.no_grad():
            return [[h.tokens for h in hs] for hs in beam_search(m, *m.encode(f, n), config)]

    batched = decode(model, feats.to(device), lens.to(device))
    single = [decode(model, feats[i:i + 1, :lens[i]].to(device), lens[i:i + 1].to(device))[0] for i in range(6)]
    scale = max(float(g.abs().max()) for g in flat)
    return {"trie_vs_flat_grad": max(float((a - b).abs().max()) for a, b in zip(trie, flat)) / scale,
            "device_vs_cpu_grad": max(float((a - b).abs().max()) for a, b in zip(trie, cpu)) / scale,
            "beam_batched_eq_single": batched == single,
            "beam_eq_cpu": batched == decode(model.cpu(), feats, lens)}


def step_seconds(recipe: str, k: int, share: bool, utterances: int, device: torch.device,
                 steps: int, skip: int) -> float:
    """Mean seconds of a training step after `skip` warm-up steps, synthetic demo-shaped batches."""
    model = recipe_model(recipe).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = random.Random(0)
    batches = []
    for _ in range(steps):
        lens = torch.tensor([rng.randint(150, 300) for _ in range(utterances)])
        hyps = [h[:k] for h in nbest(rng, utterances, max(k, 1), 40, tail=15)]
        batches.append((torch.randn(utterances, int(lens.max()), 80).to(device), lens.to(device), hyps))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    began = time.perf_counter()
    for step, (feats, lens, hyps) in enumerate(batches):
        if step == skip:
            sync()
            began = time.perf_counter()
        loss = kd_loss(model, feats, lens, hyps, share)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync()
    return round((time.perf_counter() - began) / (steps - skip), 4)


if __name__ == "__main__":
    main()
