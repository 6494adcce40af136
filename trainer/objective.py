"""What the training loop asks of a training target, so that one loop trains on ground truth
(`trainer.loop.GroundTruth`) and on a teacher's N-best (`trainer.distill.SequenceKD`) alike."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterator

import pyarrow as pa
import torch

from trainer.data import Batch


class Objective(ABC):
    @abstractmethod
    def batches(self, pools: Iterator[pa.Table], max_frames: int, n_mels: int,
                rng: random.Random | None) -> Iterator[Batch]:
        """The epoch's batches from its pools of featurised rows (shuffled by `rng`; None: shortest
        first), each of at most `max_frames` padded frames."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, feats: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """feats (B, T, F) -> {"loss": the scalar to minimise, ...: what is logged}."""
