"""The attention-based encoder-decoder with a CTC head, assembled from a ModelConfig.

Interface used by every stage (DESIGN.md, "Model interface"):
  encode(feats, lens) -> (enc, enc_lens)
  decoder.prepare / init_state / step / forward  (rows = utterance x hypothesis)
  ctc_log_probs(enc) for joint CTC-attention training and CTC prefix scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.models.config import ModelConfig
from common.models.conformer import ConformerEncoder
from common.models.lstm_decoder import LSTMAttentionDecoder
from common.models.pblstm import PyramidalBLSTMEncoder
from common.models.transformer_decoder import TransformerDecoder
from common.models.trie import build_trie
from common.tokenizer import EOS_ID, SOS_ID

IGNORE = -100


@dataclass
class Outputs:
    """What a training forward computes; the losses over it are `common.kd.joint_loss`'s."""

    logits: torch.Tensor       # (N, L, V) decoder logits along every target row [</s> y]
    ctc_logits: torch.Tensor   # (B, T', V) the CTC head's, before the softmax
    enc_lens: torch.Tensor     # (B,) encoder frames per utterance


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
                owner: list[int] | None = None, share_prefixes: bool = False) -> Outputs:
        """Teacher-forced decoder logits along `targets` and the CTC head's logits; `forward` so
        that DDP sees every training step (the losses are `common.kd.joint_loss`'s).

        Ground truth: one target per utterance. Sequence-level KD: `targets` are hypotheses and
        `owner[i]` the utterance of hypothesis i; the encoder runs once per utterance and its rows
        are gathered by index. `share_prefixes` decodes the rows of an utterance once per unique
        prefix (a trie; the same logits, less decoder work where hypotheses share prefixes).
        """
        enc, enc_lens = self.encode(feats, lens)                                  # (B, T', D)
        logits = self.teacher_forced(enc, enc_lens, targets, owner, share_prefixes)  # (N, L, V)
        return Outputs(logits=logits, ctc_logits=self.ctc(enc), enc_lens=enc_lens)

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

