"""Model recipes: one dataclass per encoder/decoder family, chosen by its `type` key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from common.config import ConfigError, from_dict


@dataclass
class PBLSTMConfig:
    """The paper's encoder: BLSTM layers, some followed by a pyramid step (time / 2)."""

    type: Literal["pblstm"] = "pblstm"
    hidden: int = 256             # units per direction
    layers: int = 3
    subsample: list[int] = field(default_factory=lambda: [1, 2, 2])  # per layer: 1 or 2
    proj: int = 256               # projection after each layer (ESPnet's blstmp)
    dropout: float = 0.0
    stack: int = 1                # input frames concatenated before the first layer (time / stack)

    def validate(self) -> None:
        if self.stack < 1:
            raise ValueError("stack must be >= 1")
        if len(self.subsample) != self.layers:
            raise ValueError(f"subsample has {len(self.subsample)} entries for {self.layers} layers")
        if any(s not in (1, 2) for s in self.subsample):
            raise ValueError("subsample entries must be 1 or 2")


@dataclass
class ConformerConfig:
    """torchaudio's Conformer after a 2-D convolutional subsampler (time / 4)."""

    type: Literal["conformer"] = "conformer"
    d_model: int = 144
    layers: int = 4
    heads: int = 4
    ffn: int = 576
    kernel: int = 15
    subsample_channels: int = 64
    dropout: float = 0.1

    def validate(self) -> None:
        if self.d_model % self.heads:
            raise ValueError("d_model must be divisible by heads")
        if self.kernel % 2 == 0:
            raise ValueError("kernel must be odd")


@dataclass
class LSTMDecoderConfig:
    """The paper's decoder: LSTM with location-aware attention (Chorowski et al., 2015)."""

    type: Literal["lstm"] = "lstm"
    embed: int = 128
    hidden: int = 256
    layers: int = 1
    att_dim: int = 256
    att_conv_channels: int = 10
    att_conv_kernel: int = 31     # odd: centred on each frame
    dropout: float = 0.0

    def validate(self) -> None:
        if self.att_conv_kernel % 2 == 0:
            raise ValueError("att_conv_kernel must be odd")


@dataclass
class TransformerDecoderConfig:
    type: Literal["transformer"] = "transformer"
    d_model: int = 144
    layers: int = 3
    heads: int = 4
    ffn: int = 576
    dropout: float = 0.1

    def validate(self) -> None:
        if self.d_model % self.heads:
            raise ValueError("d_model must be divisible by heads")


ENCODERS = {"pblstm": PBLSTMConfig, "conformer": ConformerConfig}
DECODERS = {"lstm": LSTMDecoderConfig, "transformer": TransformerDecoderConfig}


@dataclass
class ModelConfig:
    encoder: PBLSTMConfig | ConformerConfig
    decoder: LSTMDecoderConfig | TransformerDecoderConfig
    ctc_weight: float = 0.3        # joint CTC-attention training weight
    label_smoothing: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        """The one plain-dict form (bundles' config.yaml, recipes, /v1/model); `from_dict` reads it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "model") -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping")
        data = dict(data)
        enc = _pick(ENCODERS, data.get("encoder"), f"{where}.encoder")
        dec = _pick(DECODERS, data.get("decoder"), f"{where}.decoder")
        data["encoder"], data["decoder"] = {}, {}
        shell = from_dict(_ModelShell, data, where)
        cfg = cls(encoder=enc, decoder=dec, ctc_weight=shell.ctc_weight,
                  label_smoothing=shell.label_smoothing)
        if not 0.0 <= cfg.ctc_weight <= 1.0:
            raise ConfigError(f"{where}.ctc_weight: must be in [0, 1]")
        return cfg


@dataclass
class _ModelShell:
    encoder: dict
    decoder: dict
    ctc_weight: float = 0.3
    label_smoothing: float = 0.1


def _pick(table: dict[str, type], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: missing required key (a mapping with a `type`)")
    kind = data.get("type")
    if kind not in table:
        raise ConfigError(f"{where}.type: {kind!r} is not one of {', '.join(map(repr, table))}")
    return from_dict(table[kind], data, where)
