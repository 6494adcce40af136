"""Log-mel filterbanks, global CMVN and SpecAugment: the one front end of every stage.

Training, labeling and serving all call `FeatureExtractor`, built from the bundle's
config, so the features a model sees at serving time are exactly those it learnt on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.transforms as T
from safetensors.torch import load_file, save_file
from torch.nn.utils.rnn import pad_sequence


@dataclass
class FeatureConfig:
    sample_rate: int = 16000
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0

    def validate(self) -> None:
        if self.n_mels < 1 or self.sample_rate < 1000:
            raise ValueError("n_mels must be >= 1 and sample_rate >= 1000")


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 2
    time_width: int = 20


class CMVN:
    """Global mean/variance normalisation, accumulated over training features."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std = mean.float(), std.float()

    @classmethod
    def identity(cls, dim: int) -> "CMVN":
        return cls(torch.zeros(dim), torch.ones(dim))

    @classmethod
    def from_features(cls, feats: list[torch.Tensor]) -> "CMVN":
        stats = CMVNAccumulator(feats[0].shape[-1])
        for f in feats:
            stats.add(f)
        return stats.result()

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean.to(feats.device)) / self.std.to(feats.device)

    def save(self, path: str | Path) -> None:
        save_file({"mean": self.mean.contiguous(), "std": self.std.contiguous()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> "CMVN":
        tensors = load_file(str(path))
        return cls(tensors["mean"], tensors["std"])


class CMVNAccumulator:
    """Running sums in float64 so that hours of frames do not lose precision."""

    def __init__(self, dim: int) -> None:
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.total_sq = torch.zeros(dim, dtype=torch.float64)
        self.frames = 0

    def add(self, feats: torch.Tensor) -> None:
        f = feats.detach().double()
        self.total += f.sum(0)
        self.total_sq += (f * f).sum(0)
        self.frames += f.shape[0]

    def result(self) -> CMVN:
        if self.frames == 0:
            raise ValueError("no frames to compute CMVN from")
        mean = self.total / self.frames
        var = (self.total_sq / self.frames - mean * mean).clamp_min(1e-8)
        return CMVN(mean.float(), var.sqrt().float())


class FeatureExtractor:
    """Waveforms -> normalised (B, T, n_mels) features, optionally SpecAugmented."""

    def __init__(self, config: FeatureConfig, cmvn: CMVN | None = None) -> None:
        self.config = config
        self.cmvn = cmvn or CMVN.identity(config.n_mels)

    def raw(self, wave: torch.Tensor) -> torch.Tensor:
        """(S,) float waveform in [-1, 1] -> (T, n_mels) log-mel filterbank, no CMVN."""
        c = self.config
        min_samples = int(c.sample_rate * c.frame_length_ms / 1000)
        if wave.numel() < min_samples:
            wave = torch.nn.functional.pad(wave, (0, min_samples - wave.numel()))
        return kaldi.fbank(wave.float().unsqueeze(0) * 32768.0, num_mel_bins=c.n_mels,
                           frame_length=c.frame_length_ms, frame_shift=c.frame_shift_ms,
                           dither=0.0, energy_floor=0.0, sample_frequency=c.sample_rate)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        return self.cmvn(self.raw(wave))

    def batch(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """List of waveforms -> (padded (B, T, F), lengths (B,))."""
        feats = [self(w) for w in waves]
        return pad_features(feats)


def pad_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    return pad_sequence(feats, batch_first=True), lens


class SpecAugment(torch.nn.Module):
    """torchaudio's frequency and time masking, applied per utterance at training time only."""

    def __init__(self, config: SpecAugmentConfig) -> None:
        super().__init__()
        self.config = config
        self.freq = T.FrequencyMasking(config.freq_width, iid_masks=True)
        self.time = T.TimeMasking(config.time_width, iid_masks=True)

    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, T, F); padding stays zero."""
        if not self.training:
            return feats
        x = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        for _ in range(self.config.freq_masks):
            x = self.freq(x)
        for _ in range(self.config.time_masks):
            x = self.time(x)
        out = x.squeeze(1).transpose(1, 2)
        mask = torch.arange(out.shape[1], device=out.device)[None, :] < lens[:, None].to(out.device)
        return out * mask.unsqueeze(-1)
