"""Sequence-level knowledge distillation loss (Kim & Rush 2016; Mun'im, Inoue & Shinoda 2019).

The student learns the teacher's beam-search N-best instead of (or beside) the transcript:

    L = (1 - w_ctc) * sum_u sum_k a_uk * CE(student decoder | hyp_uk) / U  +  w_ctc * CTC

The encoder runs once per utterance, and the decoder once per unique prefix of its k
hypotheses: N-best lists differ mostly in their last tokens, so the hypotheses of an utterance
are merged into a prefix trie (`common/models/trie.py`), the decoder is teacher-forced over its
unique nodes, and each hypothesis's logits are gathered from the nodes on its path
(`Seq2Seq.forward` with `owner`, `weights` and `share_prefixes`). Losses and gradients are those
of decoding every hypothesis as its own row (`share_prefixes=False`, the flat path) up to float
rounding; with dropout in the decoder, hypotheses share the dropout mask of a shared prefix
(the same expected gradient). The features are never copied.

The trie pays where the step is compute-bound, as on CPUs (k=5 on the demo labels: 1.18-1.32x a
one-target step vs 2.2-2.5x flat, `bench/kd_step.py`). On a GPU these small decoders are bound by
kernel launches, not rows, and the trie's per-level gathers are extra launches: on an H200, k=5
flat rows took 0.083 s a step vs the trie's 0.135 s (student_small, 32 utterances), the teacher
0.137 vs 0.162 s (128; `bench/cuda_check.py`, before the fused location term). So the default
shares prefixes on CPU only (`share_prefixes=None`).

Word-level KD (Hinton et al. 2015; Kim & Rush 2016's word-KD) interpolates the attention
branch's cross-entropy with, along every hypothesis,

    KL = sum_u sum_k a_uk * sum_i T^2 KL(p_i^T || q_i^T) / U,
    L = (1 - w_ctc) * [(1 - W) * CE + W * KL] + w_ctc * CTC

where p_i is the teacher decoder's distribution at position i of the hypothesis, stored by the
labeling beam search as its top-M tokens (the mass outside them is dropped and the M kept
probabilities renormalised, after the temperature), and q_i the student's full softmax at
temperature T, read at those M tokens. A student that puts mass on tokens outside the teacher's
top M is therefore pushed off them. The teacher never runs during student training.

Frame-level KD does the same for the CTC branch, per encoder frame, against the teacher CTC
head's stored top-M (the student must have the teacher's frame rate):
CTC term = (1 - W_f) * CTC + W_f * sum_t T^2 KL(p_t || q_t), averaged over utterances. Dense
per-frame targets show the student where each token is, which speeds up alignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def hypothesis_weights(logps: list[float], mode: str = "uniform", temperature: float = 1.0) -> list[float]:
    """Weights a_k over one utterance's hypotheses: uniform, or softmax(logp / temperature)."""
    if not logps:
        return []
    if mode == "uniform":
        return [1.0 / len(logps)] * len(logps)
    if mode != "score":
        raise ValueError(f"hypothesis weighting must be 'uniform' or 'score', not {mode!r}")
    if not temperature > 0:
        raise ValueError("temperature must be > 0")
    top = max(logps)
    exp = [math.exp((lp - top) / temperature) for lp in logps]
    total = sum(exp)
    return [e / total for e in exp]


@dataclass
class SoftTargets:
    """The teacher's top-M distribution at every decoder position of every target row."""

    ids: torch.Tensor          # (N, L, M) token ids (anything at padded positions)
    logp: torch.Tensor         # (N, L, M) teacher log-probabilities
    rows: torch.Tensor         # (N,) bool: the rows that have teacher distributions
    weight: float = 0.5        # W: the KL's share of the attention loss
    temperature: float = 1.0   # T

    def __post_init__(self) -> None:
        if not self.temperature > 0 or not 0 <= self.weight <= 1:
            raise ValueError("word-level KD needs a temperature > 0 and a weight in [0, 1]")


def word_kd_divergence(logits: torch.Tensor, soft: SoftTargets, valid: torch.Tensor) -> torch.Tensor:
    """logits (N, L, V) of the student, valid (N, L) positions -> (N,) sum over positions of
    T^2 KL(teacher top-M, renormalised || student) at temperature T."""
    t = soft.temperature
    p_log = torch.log_softmax(soft.logp.float() / t, dim=-1)                         # (N, L, M)
    q_log = torch.log_softmax(logits.float() / t, dim=-1).gather(-1, soft.ids)       # (N, L, M)
    kl = (p_log.exp() * (p_log - q_log)).sum(-1) * (t * t)                           # (N, L)
    mask = valid & soft.rows.unsqueeze(1)
    return (kl * mask).sum(1)


def soft_targets(rows: list[tuple[list[list[int]], list[list[float]]] | None], length: int,
                 weight: float, temperature: float, device: torch.device) -> SoftTargets:
    """Per target row, its (top-M ids, log-probs) per position, or None (e.g. a transcript row),
    padded to `length` positions: the tensors `word_kd_divergence` reads."""
    m = max((len(r[0][0]) for r in rows if r is not None and r[0]), default=1)
    ids = torch.zeros(len(rows), length, m, dtype=torch.long)
    logp = torch.zeros(len(rows), length, m)
    has = torch.zeros(len(rows), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row is None:
            continue
        n = len(row[0])
        ids[i, :n] = torch.tensor(row[0], dtype=torch.long).view(n, m)
        logp[i, :n] = torch.tensor(row[1], dtype=torch.float32).view(n, m)
        has[i] = True
    return SoftTargets(ids.to(device), logp.to(device), has.to(device), weight, temperature)


def sequence_kd_loss(model: torch.nn.Module, feats: torch.Tensor, lens: torch.Tensor,
                     hyps: list[list[list[int]]], weights: list[list[float]],
                     ctc_targets: list[list[int]],
                     soft: SoftTargets | None = None,
                     ctc_soft: SoftTargets | None = None,
                     share_prefixes: bool | None = None) -> dict[str, torch.Tensor]:
    """feats (B, T, F), lens (B,); hyps[u] = the k_u token lists of utterance u, weights[u] their
    a_uk (summing to 1); ctc_targets[u] = the CTC target (1-best or transcript); `soft`, the
    teacher's top-M along every hypothesis row (word-level KD), rows in the same order;
    `ctc_soft`, the teacher CTC head's top-M per frame, one row per utterance (frame-level KD);
    `share_prefixes` False decodes every hypothesis as its own row (the flat path); None (the
    default) shares prefixes on CPU and not on a GPU (see the module docstring for why).

    Goes through the model's `forward`, so a DDP-wrapped student synchronises its gradients.
    """
    if len(hyps) != feats.shape[0] or any(not h for h in hyps):
        raise ValueError("every utterance needs at least one hypothesis")
    out = model(feats, lens, [t for h in hyps for t in h],
                owner=[u for u, h in enumerate(hyps) for _ in h],
                weights=[w for ws in weights for w in ws], ctc_targets=ctc_targets, soft=soft,
                ctc_soft=ctc_soft,
                share_prefixes=feats.device.type == "cpu" if share_prefixes is None else share_prefixes)
    return {"loss": out.loss, "att": out.att.detach(), "ctc": out.ctc.detach(), "kl": out.kl.detach(),
            "frame_kl": out.frame_kl.detach()}
