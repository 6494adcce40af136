"""Transformer decoder over the encoder output (the Conformer family's decoder).

Beam search state is the token prefix; each step re-runs the (short) prefix, which keeps
batched and single-utterance decoding bit-for-bit the same computation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from common.models.config import TransformerDecoderConfig
from common.models.conformer import sinusoidal_positions
from common.models.rows import Rows, lengths_to_mask


class TransformerDecoder(nn.Module):
    def __init__(self, cfg: TransformerDecoderConfig, enc_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.memory_proj = nn.Linear(enc_dim, cfg.d_model) if enc_dim != cfg.d_model else nn.Identity()
        layer = nn.TransformerDecoderLayer(cfg.d_model, cfg.heads, cfg.ffn, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, cfg.layers, norm=nn.LayerNorm(cfg.d_model))
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(cfg.d_model, vocab_size)

    def prepare(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> Rows:
        return {"enc": self.memory_proj(enc), "pad": ~lengths_to_mask(enc_lens, enc.shape[1])}

    def init_state(self, memory: Rows) -> Rows:
        n = memory["enc"].shape[0]
        return {"prefix": torch.zeros(n, 0, dtype=torch.long, device=memory["enc"].device)}

    def step(self, tokens: torch.Tensor, state: Rows, memory: Rows) -> tuple[torch.Tensor, Rows]:
        prefix = torch.cat([state["prefix"], tokens.unsqueeze(1)], dim=1)  # (N, t)
        logits = self.forward(memory, prefix)[:, -1]
        return torch.log_softmax(logits, dim=-1), {"prefix": prefix}

    def trim_time(self, memory: Rows, state: Rows, frames: int) -> tuple[Rows, Rows]:
        """Drop encoder frames past `frames` (all padding for the remaining rows)."""
        return {"enc": memory["enc"][:, :frames], "pad": memory["pad"][:, :frames]}, state

    def forward(self, memory: Rows, ys_in: torch.Tensor) -> torch.Tensor:
        """ys_in (N, L) -> logits (N, L, V) with a causal mask."""
        length = ys_in.shape[1]
        x = self.embed(ys_in) * math.sqrt(self.cfg.d_model)
        x = self.dropout(x + sinusoidal_positions(length, self.cfg.d_model, x.device))
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), 1)
        y = self.layers(x, memory["enc"], tgt_mask=causal, memory_key_padding_mask=memory["pad"])
        return self.output(y)
