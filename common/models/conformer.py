"""Conformer encoder: 2-D convolutional subsampling (time / 4) + torchaudio's Conformer.

torchaudio's ConformerLayer lets padded frames leak into valid ones through its
depthwise convolution, so a padded batch would encode an utterance differently from
the same utterance alone. We run torchaudio's layers ourselves and zero the padding
right before each depthwise convolution; the parameters are torchaudio's own.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchaudio.models import Conformer

from common.models.config import ConformerConfig
from common.models.interfaces import Encoder
from common.models.rows import lengths_to_mask


class Conv2dSubsampling(nn.Module):
    """(B, T, F) -> (B, T', d) with T' = ((T - 1) // 2 - 1) // 2; no padding, so no leakage."""

    def __init__(self, input_dim: int, channels: int, d_model: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU(),
        )
        freq = ((input_dim - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq, d_model)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(feats.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        return x, torch.clamp(((lens - 1) // 2 - 1) // 2, min=1)


def sinusoidal_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """(length, dim) absolute sinusoidal position encodings."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32)
                    * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe


class ConformerEncoder(Encoder):
    def __init__(self, cfg: ConformerConfig, input_dim: int) -> None:
        super().__init__()
        if input_dim < 7:
            raise ValueError("the conformer subsampler needs at least 7 feature bins")
        self.cfg = cfg
        self.subsample = Conv2dSubsampling(input_dim, cfg.subsample_channels, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conformer = Conformer(input_dim=cfg.d_model, num_heads=cfg.heads, ffn_dim=cfg.ffn,
                                   num_layers=cfg.layers, depthwise_conv_kernel_size=cfg.kernel,
                                   dropout=cfg.dropout)
        self.output_dim = cfg.d_model

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F), (B,) -> (B, T', d_model), (B,)."""
        x, lens = self.subsample(feats, lens)
        x = x * math.sqrt(self.cfg.d_model) + sinusoidal_positions(x.shape[1], x.shape[2], x.device)
        x = self.dropout(x)
        pad = ~lengths_to_mask(lens, x.shape[1])  # (B, T') True on padding
        x = x.transpose(0, 1)  # (T', B, d)
        for layer in self.conformer.conformer_layers:
            x = _masked_layer(layer, x, pad)
        return x.transpose(0, 1), lens


def _masked_layer(layer: nn.Module, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """torchaudio ConformerLayer.forward with padding zeroed before the depthwise conv."""
    residual = x
    x = layer.ffn1(x) * 0.5 + residual
    if layer.convolution_first:
        x = x + _masked_conv(layer.conv_module, x, pad)
    residual = x
    y = layer.self_attn_layer_norm(x)
    y, _ = layer.self_attn(query=y, key=y, value=y, key_padding_mask=pad, need_weights=False)
    x = layer.self_attn_dropout(y) + residual
    if not layer.convolution_first:
        x = x + _masked_conv(layer.conv_module, x, pad)
    x = layer.ffn2(x) * 0.5 + x
    return layer.final_layer_norm(x)


def _masked_conv(module: nn.Module, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """(T, B, d) -> (T, B, d): pointwise conv + GLU, zero padding, then depthwise onward."""
    y = module.layer_norm(x.transpose(0, 1)).transpose(1, 2)  # (B, d, T)
    pointwise, glu, *rest = module.sequential
    y = glu(pointwise(y))
    y = y.masked_fill(pad[:, None, :], 0.0)
    for op in rest:
        y = op(y)
    return y.permute(2, 0, 1)
