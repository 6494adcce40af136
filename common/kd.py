"""Knowledge distillation in one place (Kim & Rush 2016; Mun'im, Inoue & Shinoda 2019): the KD
settings (`KDConfig`: the recipe's `kd:` section, the `seqkd distill` flags over it, the bundle
meta's `kd` entry and its label in the report) and every term of the loss, composed by one
function (`joint_loss`) over what the model's forward computes (`Seq2Seq.forward` -> `Outputs`:
decoder logits, CTC logits, encoder lengths). Ground-truth training is the same function with
no teacher: one target per utterance, no weights, no distributions.

The student learns the teacher's beam-search N-best instead of (or beside) the transcript:

    L = (1 - w_ctc) * sum_u sum_k a_uk * CE(student decoder | hyp_uk) / U  +  w_ctc * CTC

The encoder runs once per utterance, and the decoder once per unique prefix of its k
hypotheses: N-best lists differ mostly in their last tokens, so the hypotheses of an utterance
are merged into a prefix trie (`common/models/trie.py`), the decoder is teacher-forced over its
unique nodes, and each hypothesis's logits are gathered from the nodes on its path
(`Seq2Seq.forward` with `owner` and `share_prefixes`). Losses and gradients are those of
decoding every hypothesis as its own row (`share_prefixes=False`, the flat path) up to float
rounding; with dropout in the decoder, hypotheses share the dropout mask of a shared prefix
(the same expected gradient). The features are never copied.

The trie pays where the step is compute-bound, as on CPUs (k=5 on the demo labels: 1.18-1.32x a
one-target step vs 2.2-2.5x flat, `bench/kd_step.py`). On a GPU these small decoders are bound by
kernel launches, not rows, and the trie's per-level gathers are extra launches: on an H200, k=5
flat rows took 0.083 s a step vs the trie's 0.135 s (student_small, 32 utterances), the teacher
0.137 vs 0.162 s (128; `bench/cuda_check.py`, before the fused location term). So the default
shares prefixes on CPU only (`share_prefixes=None`).

The weights a_uk over an utterance's hypotheses are uniform or softmax(logp_uk / T_w)
(`weights: score`, `temperature` T_w); `gt_weight` G adds the transcript as one more target with
weight G (the hypotheses' weights scaled by 1 - G), and the CTC branch learns the 1-best or the
transcript (`ctc_target`). `expand` trains each hypothesis as its own example (the paper's
protocol; `trainer.data.expanded` batches them) instead of all k beside one encoder pass.

Word-level KD (Hinton et al. 2015; Kim & Rush 2016's word-KD) interpolates the attention
branch's cross-entropy with, along every hypothesis,

    KL = sum_u sum_k a_uk * sum_i T^2 KL(p_i^T || q_i^T) / U,
    L = (1 - w_ctc) * [(1 - W) * CE + W * KL] + w_ctc * CTC

where p_i is the teacher decoder's distribution at position i of the hypothesis, stored by the
labeling beam search as its top-M tokens (the mass outside them is dropped and the M kept
probabilities renormalised, after the temperature), and q_i the student's full softmax at
temperature T, read at those M tokens. A student that puts mass on tokens outside the teacher's
top M is therefore pushed off them (`word_kd` W, `kd_temperature` T). The teacher never runs
during student training.

Frame-level KD does the same for the CTC branch, per encoder frame, against the teacher CTC
head's stored top-M (the student must have the teacher's frame rate):
CTC term = (1 - W_f) * CTC + W_f * sum_t T^2 KL(p_t || q_t), averaged over utterances
(`frame_kd` W_f, at the same T). Dense per-frame targets show the student where each token is,
which speeds up alignment. Every term, KD or not, is `joint_loss`'s:

    L = (1 - w_ctc) * [(1 - W) * CE + W * KL] + w_ctc * [(1 - W_f) * CTC + W_f * frame KL]

with w_ctc and CE's label smoothing from the model's config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F

from common.config import FieldError
from common.models.config import ModelConfig
from common.models.seq2seq import IGNORE, Outputs, decoder_io
from common.tokenizer import BLANK_ID


# the settings `KDConfig.describe` has its own words for
_DESCRIBED = {"weights", "temperature", "gt_weight", "word_kd", "kd_temperature", "expand", "frame_kd"}


@dataclass(frozen=True)
class KDConfig:
    """How a student learns from its teacher's labels, all of it: the recipe's `kd:` section (the
    `seqkd distill` flags override it), the bundle meta's `kd` entry, the report's targets label.
    Which hypotheses are kept (k, max_wer) is the labels' selection, `trainer.data.PseudoLabels`."""

    weights: Literal["uniform", "score"] = "uniform"   # a_uk: uniform, or softmax(logp / temperature)
    temperature: float = 1.0
    gt_weight: float = 0.0            # the transcript's share of the targets, where there is one
    ctc_target: Literal["1best", "transcript"] = "1best"   # transcript: the 1-best without one
    word_kd: float = 0.0              # W: attention loss = (1 - W) CE + W KL along each hypothesis
    kd_temperature: float = 1.0       # T of the word- and frame-level KL (scaled by T^2)
    expand: bool = False              # each hypothesis its own example (the paper's protocol)
    frame_kd: float = 0.0             # W_f: CTC loss = (1 - W_f) CTC + W_f KL per encoder frame

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One line naming the field at fault (a recipe's: `kd.FIELD: ...`)."""
        if self.weights not in ("uniform", "score"):
            raise FieldError("weights", f"must be 'uniform' or 'score', not {self.weights!r}")
        if self.weights == "score" and not self.temperature > 0:
            raise FieldError("temperature", f"must be > 0, not {self.temperature}")
        for name in ("gt_weight", "word_kd", "frame_kd"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise FieldError(name, f"must be in [0, 1], not {getattr(self, name)}")
        if self.ctc_target not in ("1best", "transcript"):
            raise FieldError("ctc_target", f"must be '1best' or 'transcript', not {self.ctc_target!r}")
        if not self.kd_temperature > 0:
            raise FieldError("kd_temperature", f"must be > 0, not {self.kd_temperature}")

    @property
    def soft(self) -> bool:
        """Whether the rows must carry the teacher's stored distributions."""
        return self.word_kd > 0 or self.frame_kd > 0

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "KDConfig":
        """The `kd` entry of a KD bundle's meta.json (of an older bundle: its flat keys)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (meta.get("kd") or meta).items() if k in names})

    def describe(self, k: int = 1, max_wer: float | None = None) -> list[str]:
        """The report's words for these settings after "KD k=K b=B" (with the labels' selection,
        k and max_wer), e.g. ["+word 0.5", "+frame 0.5"]."""
        parts = [f"score T={self.temperature}"] if self.weights == "score" else ["uniform"] * (k > 1)
        parts += [f"+GT {self.gt_weight}"] * bool(self.gt_weight)
        parts += [f"WER<={max_wer}"] * (max_wer is not None)
        parts += [f"+word {self.word_kd:g}"] * bool(self.word_kd)
        parts += [f"+frame {self.frame_kd:g}"] * bool(self.frame_kd)
        parts += [f"T={self.kd_temperature:g}"] * (self.soft and self.kd_temperature != 1)
        parts += ["expanded"] * self.expand
        # a setting without words above is named as it is written, where it is not its default
        return parts + [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                        if f.name not in _DESCRIBED and getattr(self, f.name) != f.default]

    def assemble(self, hyps: list[list[list[int]]], logps: list[list[float]], truths: list[list[int]],
                 topms: list[list] | None = None) -> tuple[list[list[list[int]]], list[list[float]],
                                                           list[list[int]], list]:
        """Per utterance (its kept hypotheses, their teacher log-probs, its transcript's tokens,
        possibly empty, and the teacher's top-M along each hypothesis): its target token lists,
        their weights a_uk (summing to 1) and its CTC target; and per target row, the teacher's
        top-M along it (None for a transcript row)."""
        out_hyps, weights, ctc, soft = [], [], [], []
        for hyp, logp, truth, topm in zip(hyps, logps, truths, topms or [[None] * len(h) for h in hyps]):
            a = hypothesis_weights(logp, self.weights, self.temperature)
            ctc.append(truth if self.ctc_target == "transcript" and truth else hyp[0])
            soft += topm
            if self.gt_weight > 0 and truth:
                hyp, a = [*hyp, truth], [(1 - self.gt_weight) * x for x in a] + [self.gt_weight]
                soft.append(None)
            out_hyps.append(hyp)
            weights.append(a)
        return out_hyps, weights, ctc, soft

    def distributions(self, rows: list, length: int, ctc_rows: list | None,
                      device: torch.device) -> tuple[SoftTargets | None, SoftTargets | None]:
        """The teacher's stored distributions as `joint_loss` reads them, at these weights and
        temperature: along the target rows (`assemble`'s, padded to `length` positions; None
        without word-level KD), and per encoder frame (`ctc_rows`, one per utterance; None
        without frame-level KD)."""
        words = frames = None
        if self.word_kd:
            words = soft_targets(rows, length, self.word_kd, self.kd_temperature, device)
        if self.frame_kd:
            frames = soft_targets(ctc_rows, max(len(c[0]) for c in ctc_rows), self.frame_kd,
                                  self.kd_temperature, device)
        return words, frames


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


@dataclass
class Losses:
    loss: torch.Tensor      # the scalar to minimise
    att: torch.Tensor       # the attention branch's cross-entropy (weighted per hypothesis)
    ctc: torch.Tensor       # the CTC branch (with frame-level KD mixed in)
    acc: float              # the decoder's teacher-forced token accuracy
    kl: torch.Tensor        # word-level KD term (0 without soft targets)
    frame_kl: torch.Tensor  # frame-level (CTC) KD term (0 without ctc_soft)


def joint_loss(out: Outputs, targets: list[list[int]], cfg: ModelConfig,
               weights: list[float] | None = None, ctc_targets: list[list[int]] | None = None,
               soft: SoftTargets | None = None, ctc_soft: SoftTargets | None = None) -> Losses:
    """Every term of the loss over a forward's `out` (see the module docstring):
    (1 - w_ctc) [(1 - W) CE + W KL] + w_ctc [(1 - W_f) CTC + W_f frame KL], w_ctc and CE's label
    smoothing from the model's `cfg`. `targets` are the rows the decoder was forced along;
    `weights[i]` row i's a_uk (None: every row its own utterance, the batch mean); `ctc_targets`
    one per utterance (None: `targets`); `soft` the teacher's top-M along the rows (word-level KD,
    W = `soft.weight`); `ctc_soft` its CTC head's per encoder frame (frame-level KD, W_f)."""
    logits, utts = out.logits, out.ctc_logits.shape[0]
    _, ys_out = decoder_io(targets, logits.device)
    per_seq = attention_loss(logits, ys_out, cfg.label_smoothing, reduction="none")
    valid = ys_out != IGNORE
    a = None if weights is None else torch.tensor(weights, device=logits.device, dtype=per_seq.dtype)
    att = per_seq.mean() if a is None else (a * per_seq).sum() / utts
    ctc = ctc_loss(torch.log_softmax(out.ctc_logits, dim=-1), out.enc_lens,
                   targets if ctc_targets is None else ctc_targets)
    frame_kl = ctc.new_zeros(())
    if ctc_soft is not None:
        frame_kl = frame_kd_divergence(out, ctc_soft)
        ctc = (1 - ctc_soft.weight) * ctc + ctc_soft.weight * frame_kl
    kl = att.new_zeros(())
    att_term = att
    if soft is not None:
        per_seq_kl = word_kd_divergence(logits, soft, valid)                    # (N,)
        kl = per_seq_kl.mean() if a is None else (a * per_seq_kl).sum() / utts
        att_term = (1 - soft.weight) * att + soft.weight * kl
    w = cfg.ctc_weight
    loss = (1 - w) * att_term + w * ctc
    acc = ((logits.argmax(-1) == ys_out) & valid).sum().item() / max(1, int(valid.sum()))
    return Losses(loss=loss, att=att, ctc=ctc, acc=acc, kl=kl, frame_kl=frame_kl)


def frame_kd_divergence(out: Outputs, ctc_soft: SoftTargets) -> torch.Tensor:
    """The frame-level KL over the valid encoder frames, averaged over utterances."""
    ctc_logits = out.ctc_logits
    if ctc_soft.ids.shape[:2] != ctc_logits.shape[:2]:
        raise ValueError(f"the teacher's CTC frames {tuple(ctc_soft.ids.shape[:2])} are not the "
                         f"student's encoder frames {tuple(ctc_logits.shape[:2])}: frame-level KD "
                         f"needs a student with the teacher's frame rate")
    frames = torch.arange(ctc_logits.shape[1], device=ctc_logits.device).unsqueeze(0) \
        < out.enc_lens.unsqueeze(1)                                                    # (B, T')
    return word_kd_divergence(ctc_logits, ctc_soft, frames).mean()


def model_loss(model: torch.nn.Module, feats: torch.Tensor, lens: torch.Tensor, targets: list[list[int]],
               ctc_targets: list[list[int]] | None = None) -> Losses:
    """One target per utterance (ground truth), no teacher: the model's forward (so that DDP sees
    the step), then `joint_loss`."""
    return joint_loss(model(feats, lens, targets), targets, _core(model).cfg, ctc_targets=ctc_targets)


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
    targets = [t for h in hyps for t in h]
    out = model(feats, lens, targets, owner=[u for u, h in enumerate(hyps) for _ in h],
                share_prefixes=feats.device.type == "cpu" if share_prefixes is None else share_prefixes)
    losses = joint_loss(out, targets, _core(model).cfg, [w for ws in weights for w in ws], ctc_targets,
                        soft, ctc_soft)
    return {"loss": losses.loss, "att": losses.att.detach(), "ctc": losses.ctc.detach(),
            "kl": losses.kl.detach(), "frame_kl": losses.frame_kl.detach()}


def _core(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (its config)."""
    return getattr(model, "module", model)


def attention_loss(logits: torch.Tensor, ys_out: torch.Tensor, smoothing: float,
                   reduction: str = "mean") -> torch.Tensor:
    """Label-smoothed cross-entropy summed over tokens; per sequence when reduction='none'."""
    n, length, v = logits.shape
    tok = F.cross_entropy(logits.reshape(-1, v).float(), ys_out.reshape(-1), ignore_index=IGNORE,
                          label_smoothing=smoothing, reduction="none").view(n, length)
    per_seq = tok.sum(1)
    return per_seq if reduction == "none" else per_seq.mean()


def ctc_loss(log_probs: torch.Tensor, enc_lens: torch.Tensor, targets: list[list[int]],
             reduction: str = "mean") -> torch.Tensor:
    """CTC summed over each sequence; mean over the batch unless reduction='none'."""
    flat = torch.tensor([tok for t in targets for tok in t], dtype=torch.long)
    tlens = torch.tensor([len(t) for t in targets], dtype=torch.long)
    loss = F.ctc_loss(log_probs.transpose(0, 1).float(), flat, enc_lens.cpu(), tlens,
                      blank=BLANK_ID, reduction="none", zero_infinity=True)
    return loss if reduction == "none" else loss.mean()
