"""The attention-based encoder-decoder with a CTC head, assembled from a ModelConfig.

Interface used by every stage (DESIGN.md, "Model interface"):
  encode(feats, lens) -> (enc, enc_lens)
  decoder.prepare / init_state / step / forward  (rows = utterance x hypothesis)
  ctc_log_probs(enc) for joint CTC-attention training and CTC prefix scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.kd_loss import SoftTargets, word_kd_divergence
from common.models.config import ModelConfig
from common.models.conformer import ConformerEncoder
from common.models.lstm_decoder import LSTMAttentionDecoder
from common.models.pblstm import PyramidalBLSTMEncoder
from common.models.transformer_decoder import TransformerDecoder
from common.models.trie import build_trie
from common.tokenizer import BLANK_ID, EOS_ID, SOS_ID

IGNORE = -100


@dataclass
class Losses:
    loss: torch.Tensor
    att: torch.Tensor
    ctc: torch.Tensor
    acc: float
    kl: torch.Tensor        # word-level KD term (0 without soft targets)
    frame_kl: torch.Tensor  # frame-level (CTC) KD term (0 without ctc_soft)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, input_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg, self.input_dim, self.vocab_size = cfg, input_dim, vocab_size
        if cfg.encoder.type == "pblstm":
            self.encoder = PyramidalBLSTMEncoder(cfg.encoder, input_dim)
        else:
            self.encoder = ConformerEncoder(cfg.encoder, input_dim)
        enc_dim = self.encoder.output_dim
        if cfg.decoder.type == "lstm":
            self.decoder = LSTMAttentionDecoder(cfg.decoder, enc_dim, vocab_size)
        else:
            self.decoder = TransformerDecoder(cfg.decoder, enc_dim, vocab_size)
        self.ctc = nn.Linear(enc_dim, vocab_size)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F), (B,) -> (B, T', D), (B,)."""
        return self.encoder(feats, lens)

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        """(B, T', D) -> (B, T', V) log-probabilities."""
        return torch.log_softmax(self.ctc(enc), dim=-1)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor, targets: list[list[int]],
                owner: list[int] | None = None, weights: list[float] | None = None,
                ctc_targets: list[list[int]] | None = None, soft: SoftTargets | None = None,
                ctc_soft: SoftTargets | None = None, share_prefixes: bool = False) -> Losses:
        """Joint CTC-attention loss; `forward` so that DDP sees every training step.

        Ground truth: one target per utterance. Sequence-level KD: `targets` are hypotheses,
        `owner[i]` the utterance of hypothesis i and `weights[i]` its weight (summing to 1
        per utterance); the encoder runs once per utterance and its rows are gathered by index.
        `share_prefixes` decodes the rows of an utterance once per unique prefix (a trie; same
        losses and gradients, less decoder work where hypotheses share prefixes).
        Word-level KD: `soft` holds the teacher's top-M along the target rows; its KL is
        weighted like the rows' cross-entropy and interpolated with it, W = `soft.weight`:
        attention loss = (1 - W) CE + W KL (Kim & Rush 2016), so CTC keeps its share.
        Frame-level KD: `ctc_soft` holds the teacher CTC head's top-M per encoder frame (one row
        per utterance, same frame rate); CTC loss = (1 - W) CTC + W KL over the valid frames.
        """
        enc, enc_lens = self.encode(feats, lens)                                  # (B, T', D)
        logits = self.teacher_forced(enc, enc_lens, targets, owner, share_prefixes)  # (N, L, V)
        _, ys_out = decoder_io(targets, enc.device)
        per_seq = attention_loss(logits, ys_out, self.cfg.label_smoothing, reduction="none")
        valid = ys_out != IGNORE
        a = None if weights is None else torch.tensor(weights, device=enc.device, dtype=per_seq.dtype)
        att = per_seq.mean() if a is None else (a * per_seq).sum() / enc.shape[0]
        ctc_logits = self.ctc(enc)                                                # (B, T', V)
        ctc = ctc_loss(torch.log_softmax(ctc_logits, dim=-1), enc_lens,
                       targets if ctc_targets is None else ctc_targets)
        frame_kl = ctc.new_zeros(())
        if ctc_soft is not None:
            if ctc_soft.ids.shape[:2] != ctc_logits.shape[:2]:
                raise ValueError(f"the teacher's CTC frames {tuple(ctc_soft.ids.shape[:2])} are not the "
                                 f"student's encoder frames {tuple(ctc_logits.shape[:2])}: frame-level KD "
                                 f"needs a student with the teacher's frame rate")
            frames = torch.arange(enc.shape[1], device=enc.device).unsqueeze(0) < enc_lens.unsqueeze(1)
            frame_kl = word_kd_divergence(ctc_logits, ctc_soft, frames).mean()
            ctc = (1 - ctc_soft.weight) * ctc + ctc_soft.weight * frame_kl
        w = self.cfg.ctc_weight
        loss = (1 - w) * att + w * ctc
        kl = att.new_zeros(())
        if soft is not None:
            per_seq_kl = word_kd_divergence(logits, soft, valid)                # (N,)
            kl = per_seq_kl.mean() if a is None else (a * per_seq_kl).sum() / enc.shape[0]
            loss = (1 - w) * ((1 - soft.weight) * att + soft.weight * kl) + w * ctc
        acc = ((logits.argmax(-1) == ys_out) & valid).sum().item() / max(1, int(valid.sum()))
        return Losses(loss=loss, att=att, ctc=ctc, acc=acc, kl=kl, frame_kl=frame_kl)

    def teacher_forced(self, enc: torch.Tensor, enc_lens: torch.Tensor, targets: list[list[int]],
                       owner: list[int] | None = None, share_prefixes: bool = False) -> torch.Tensor:
        """enc (B, T', D) -> decoder logits (N, L, V) along every target row [</s> y], L = longest + 1
        (anything past a row's end). Row i belongs to utterance owner[i] (default: row i); with
        `share_prefixes` the decoder runs over the rows' prefix trie, once per unique prefix, and
        each row's logits are gathered from the nodes on its path."""
        if owner is not None and share_prefixes:
            trie = build_trie(targets, owner, enc.device)
            return self.decoder.forward_trie(self.decoder.prepare(enc, enc_lens), trie)[trie.path]
        if owner is not None:
            index = torch.tensor(owner, device=enc.device)                        # (N,)
            enc, enc_lens = enc.index_select(0, index), enc_lens.index_select(0, index)
        ys_in, _ = decoder_io(targets, enc.device)
        return self.decoder(self.decoder.prepare(enc, enc_lens), ys_in)


def decoder_io(targets: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> decoder input [sos y] (N, L+1) padded with eos, output [y eos] padded IGNORE."""
    longest = max(len(t) for t in targets) + 1
    ys_in = torch.full((len(targets), longest), EOS_ID, dtype=torch.long)
    ys_out = torch.full((len(targets), longest), IGNORE, dtype=torch.long)
    for i, t in enumerate(targets):
        ys_in[i, : len(t) + 1] = torch.tensor([SOS_ID, *t], dtype=torch.long)
        ys_out[i, : len(t) + 1] = torch.tensor([*t, EOS_ID], dtype=torch.long)
    return ys_in.to(device), ys_out.to(device)


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
