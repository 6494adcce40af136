"""Pyramidal BLSTM encoder (Listen, Attend and Spell; the paper's encoder family).

Each layer is a BLSTM whose output, where `subsample` says 2, is shortened by
concatenating adjacent frames (T -> T/2), then projected (ESPnet's blstmp). Packed
sequences keep padding out of the backward direction, so a padded batch encodes each
utterance exactly as it would alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from common.models.config import PBLSTMConfig


class PyramidalBLSTMEncoder(nn.Module):
    def __init__(self, cfg: PBLSTMConfig, input_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.lstms = nn.ModuleList()
        self.projs = nn.ModuleList()
        dim = input_dim
        for factor in cfg.subsample:
            self.lstms.append(nn.LSTM(dim, cfg.hidden, batch_first=True, bidirectional=True))
            self.projs.append(nn.Linear(2 * cfg.hidden * factor, cfg.proj))
            dim = cfg.proj
        self.dropout = nn.Dropout(cfg.dropout)
        self.output_dim = cfg.proj

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F), (B,) -> (B, T', proj), (B,) with T' = T / prod(subsample)."""
        x, lens = feats, lens.cpu()
        for lstm, proj, factor in zip(self.lstms, self.projs, self.cfg.subsample):
            packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
            out, _ = lstm(packed)
            x, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # (B, T, 2H)
            if factor == 2:
                t2 = x.shape[1] // 2
                x = x[:, : 2 * t2].reshape(x.shape[0], t2, -1)  # (B, T/2, 4H)
                lens = torch.clamp(lens // 2, min=1)
            x = self.dropout(torch.tanh(proj(x)))
        return x, lens.to(feats.device)
