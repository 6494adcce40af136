"""Encoders, decoders and the Seq2Seq model assembled from a YAML config."""

from common.models.config import ModelConfig
from common.models.seq2seq import Seq2Seq

__all__ = ["ModelConfig", "Seq2Seq"]
