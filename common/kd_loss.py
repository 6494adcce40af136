"""Sequence-level knowledge distillation loss (Kim & Rush 2016; Mun'im, Inoue & Shinoda 2019).

The student learns the teacher's beam-search N-best instead of (or beside) the transcript:

    L = (1 - w_ctc) * sum_u sum_k a_uk * CE(student decoder | hyp_uk) / U  +  w_ctc * CTC

The encoder runs once per utterance; its output rows are gathered by index for the k
hypotheses of each utterance, which then run through the decoder as extra rows of one batch
(`Seq2Seq.forward` with `owner` and `weights`). The features are never copied, and one
encoder pass serves all k targets.
"""

from __future__ import annotations

import math

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


def sequence_kd_loss(model: torch.nn.Module, feats: torch.Tensor, lens: torch.Tensor,
                     hyps: list[list[list[int]]], weights: list[list[float]],
                     ctc_targets: list[list[int]]) -> dict[str, torch.Tensor]:
    """feats (B, T, F), lens (B,); hyps[u] = the k_u token lists of utterance u, weights[u] their
    a_uk (summing to 1); ctc_targets[u] = the CTC target (1-best or transcript).

    Goes through the model's `forward`, so a DDP-wrapped student synchronises its gradients.
    """
    if len(hyps) != feats.shape[0] or any(not h for h in hyps):
        raise ValueError("every utterance needs at least one hypothesis")
    out = model(feats, lens, [t for h in hyps for t in h],
                owner=[u for u, h in enumerate(hyps) for _ in h],
                weights=[w for ws in weights for w in ws], ctc_targets=ctc_targets)
    return {"loss": out.loss, "att": out.att.detach(), "ctc": out.ctc.detach()}
