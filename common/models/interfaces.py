"""What each part of a model must provide, as small abstract classes (ESPnet2's AbsEncoder and
AbsDecoder are the pattern): `Seq2Seq` composes an `Encoder` with a decoder, and the beam search
drives any `DecoderStep` (the PyTorch decoders and the ONNX one alike) without knowing which.

Shapes: B utterances, T feature frames, F feature dims, T' encoder frames, D encoder dims, N
search rows (utterance x beam), V vocabulary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class Encoder(nn.Module, ABC):
    """Features to encoder frames, with their valid lengths."""

    output_dim: int   # D

    @abstractmethod
    def forward(self, feats: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F), lens (B,) -> enc (B, T', D), enc_lens (B,)."""


class DecoderStep(ABC):
    """One attention-decoder step for every search row at once; what `common.beam_search` calls.

    `memory` and `state` are each implementation's own (dicts of tensors whose dim 0 is the row),
    so the search selects and trims them without looking inside."""

    @abstractmethod
    def prepare(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> Any:
        """enc (N, T', D), enc_lens (N,) -> the memory every step attends to."""

    @abstractmethod
    def init_state(self, memory: Any) -> Any:
        """The state before the first token (<s>)."""

    @abstractmethod
    def step(self, tokens: torch.Tensor, state: Any, memory: Any) -> tuple[torch.Tensor, Any]:
        """tokens (N,), the last of each row -> log-probabilities (N, V) of the next, the new state."""

    @abstractmethod
    def trim_time(self, memory: Any, state: Any, frames: int) -> tuple[Any, Any]:
        """Memory and state cut to the first `frames` encoder frames (enough for every row left)."""
