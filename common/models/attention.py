"""Location-aware attention (Chorowski et al., 2015), the paper's attention.

Energies see the encoder frame, the decoder state and a convolution of the previous
alignment, which keeps the alignment moving monotonically through long utterances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LocationAwareAttention(nn.Module):
    def __init__(self, enc_dim: int, dec_dim: int, att_dim: int, channels: int, kernel: int,
                 sharpening: float = 2.0) -> None:
        super().__init__()
        self.enc_proj = nn.Linear(enc_dim, att_dim)
        self.dec_proj = nn.Linear(dec_dim, att_dim, bias=False)
        # the conv's weight, applied fused with loc_proj in `forward` (a module, so checkpoints keep their keys)
        self.loc_conv = nn.Conv1d(1, channels, kernel, padding=kernel // 2, bias=False)
        self.loc_proj = nn.Linear(channels, att_dim, bias=False)
        self.score = nn.Linear(att_dim, 1)
        self.sharpening = sharpening

    def project(self, enc: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, T, A): the decoder-independent part, computed once per utterance."""
        return self.enc_proj(enc)

    def forward(self, enc: torch.Tensor, enc_proj: torch.Tensor, mask: torch.Tensor,
                query: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """enc (N, T, D), enc_proj (N, T, A), mask (N, T) valid, query (N, H), prev (N, T)
        -> context (N, D), weights (N, T)."""
        n, t, a = enc_proj.shape
        k = self.loc_conv.kernel_size[0]
        # each frame's window of the previous alignment, gathered: one kernel each way on any
        # device (K shifted slices would be 2K in the backward) and exportable (the TorchScript
        # exporter has no dynamic unfold)
        starts = torch.arange(t, device=prev.device).unsqueeze(1) + torch.arange(k, device=prev.device)
        windows = F.pad(prev, (k // 2, k // 2)).gather(1, starts.view(1, t * k).expand(n, t * k))
        windows = windows.view(n * t, k)                                                  # (N*T, K)
        # loc_proj(loc_conv(prev)) is linear in the windows: one (K, A) matrix, so enc_proj + the
        # location term is one fused addmm. This is the hot loop of decoding and training, and
        # a 1-channel Conv1d's backward cost more than all of it (2 ms a step of 120 rows).
        location = self.loc_conv.weight.squeeze(1).t() @ self.loc_proj.weight.t()       # (K, A)
        hidden = torch.addmm(enc_proj.reshape(n * t, a), windows, location).view(n, t, a)
        hidden = torch.tanh_(hidden.add_(self.dec_proj(query).unsqueeze(1)))
        energy = self.score(hidden).squeeze(-1).masked_fill(~mask, float("-inf"))  # (N, T)
        weights = torch.softmax(self.sharpening * energy, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), enc).squeeze(1)  # (N, D)
        return context, weights
