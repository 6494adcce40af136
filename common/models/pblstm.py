"""Pyramidal BLSTM encoder (Listen, Attend and Spell; the paper's encoder family).

Each layer is a BLSTM whose output, where `subsample` says 2, is shortened by
concatenating adjacent frames (T -> T/2), then projected (ESPnet's blstmp). `stack` > 1
concatenates input frames before the first layer (a low frame rate front end: the first,
longest layer then runs over T/stack steps, which is most of a CPU's training time).

The backward direction runs a forward LSTM over each utterance reversed within its own
length, so padding never enters it and a padded batch encodes each utterance exactly as
it would alone. (PyTorch's packed sequences do the same, but their CPU backward pass is
20x slower than that of a padded batch.)
"""

from __future__ import annotations

import torch
from torch import nn

from common.models.config import PBLSTMConfig
from common.models.interfaces import Encoder


class PyramidalBLSTMEncoder(Encoder):
    def __init__(self, cfg: PBLSTMConfig, input_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.forward_lstms = nn.ModuleList()
        self.backward_lstms = nn.ModuleList()
        self.projs = nn.ModuleList()
        dim = input_dim * cfg.stack
        for factor in cfg.subsample:
            self.forward_lstms.append(nn.LSTM(dim, cfg.hidden, batch_first=True))
            self.backward_lstms.append(nn.LSTM(dim, cfg.hidden, batch_first=True))
            self.projs.append(nn.Linear(2 * cfg.hidden * factor, cfg.proj))
            dim = cfg.proj
        self.dropout = nn.Dropout(cfg.dropout)
        self.output_dim = cfg.proj

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F), (B,) -> (B, T', proj), (B,) with T' = T / (stack x prod(subsample))."""
        x, lens = stack_frames(feats, lens.to(feats.device), self.cfg.stack)
        for fwd, bwd, proj, factor in zip(self.forward_lstms, self.backward_lstms, self.projs,
                                          self.cfg.subsample):
            flip = reverse_index(lens, x.shape[1])                     # (B, T)
            back, _ = bwd(reverse(x, flip))
            x = torch.cat([fwd(x)[0], reverse(back, flip)], dim=-1)    # (B, T, 2H)
            x, lens = stack_frames(x, lens, factor)                    # (B, T/2, 4H) where 2
            x = self.dropout(torch.tanh(proj(x)))
        return x, lens


def stack_frames(x: torch.Tensor, lens: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) -> (B, T/factor, factor*D): adjacent frames concatenated, a ragged tail dropped."""
    if factor == 1:
        return x, lens
    t = x.shape[1] // factor
    return x[:, : factor * t].reshape(x.shape[0], t, -1), torch.clamp(lens // factor, min=1)


def reverse_index(lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) time index that reverses each row's first len frames, keeps the rest."""
    t = torch.arange(max_len, device=lens.device).unsqueeze(0)     # (1, T)
    return torch.where(t < lens.unsqueeze(1), lens.unsqueeze(1) - 1 - t, t)


def reverse(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather (B, T, D) along time with a (B, T) index (its own inverse for `reverse_index`)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
