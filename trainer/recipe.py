"""Training recipes: one YAML file = model + tokenizer + features + optimisation, checked on load.

A recipe names everything that decides the result, so a run directory plus its recipe
says exactly how a bundle was made; a student's KD settings are its optional `kd:` section
(`common.kd.KDConfig`, read by `seqkd distill`, whose flags override it; the run's recipe.yaml
holds what it trained with). Command-line overrides (`--epochs`, `--max-steps`,
`--num-workers`, the KD flags) go through the same validation as the file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import ConfigError, from_dict, load_yaml
from common.features import FeatureConfig, SpecAugmentConfig
from common.kd import KDConfig
from common.models import ModelConfig


@dataclass
class TokenizerRecipe:
    model_type: Literal["unigram", "bpe", "char"] = "char"
    vocab_size: int = 64

    def validate(self) -> None:
        if self.vocab_size < 4:
            raise ValueError("vocab_size must be >= 4")


@dataclass
class OptimRecipe:
    """AdamW with linear warm-up then inverse-square-root decay (the Transformer schedule)."""

    epochs: int = 10
    max_steps: int | None = None       # stop early after this many optimizer steps
    lr: float = 1e-3                   # peak learning rate, reached at warmup_steps
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    max_frames: int = 20000            # per batch: (longest utterance in frames) x utterances
    bucket_utts: int = 256             # utterances sorted together into length buckets
    specaugment: bool = True
    log_every: int = 10                # steps between metric reports
    checkpoint_every: int = 500        # steps between mid-epoch checkpoints (and every epoch)
    dev_beam: int = 1                  # beam of the per-epoch dev WER (joint CTC at ctc_weight)
    patience: int | None = None        # stop after this many epochs without a better dev WER
    # epochs whose batches run from the shortest utterances to the longest instead of shuffled
    # (SortaGrad, Amodei et al. 2016): CTC and attention leave their plateau on short phrases first
    short_first_epochs: int = 0
    seed: int = 0

    def validate(self) -> None:
        for name in ("epochs", "warmup_steps", "max_frames", "bucket_utts", "log_every",
                     "checkpoint_every", "dev_beam"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.short_first_epochs < 0:
            raise ValueError("short_first_epochs must be >= 0")
        if self.patience is not None and self.patience < 1:
            raise ValueError("patience must be >= 1 (or null: train every epoch)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError("lr must be a positive number")


@dataclass
class DataRecipe:
    remove_non_language: bool = True   # drop <NOISE>, <*IN*>, <*MR.*> from targets (ESPnet WSJ)
    cmvn_utts: int = 500               # training utterances the global CMVN is estimated from
    max_duration_s: float = 30.0       # longer training utterances are skipped (and counted)
    cache_mb: int = 2048               # per worker: featurised epochs kept in memory up to this size

    def validate(self) -> None:
        if self.cmvn_utts < 1 or self.max_duration_s <= 0:
            raise ValueError("cmvn_utts must be >= 1 and max_duration_s > 0")
        if self.cache_mb < 0:
            raise ValueError("cache_mb must be >= 0 (0: stream every epoch)")


@dataclass
class ScalingRecipe:
    num_workers: int = 1
    use_gpu: Literal["auto", True, False] = "auto"   # auto: GPUs when the cluster has them
    max_failures: int = 0              # Ray Train restarts from the last checkpoint this often
    # CPU threads of a worker once epochs replay from the feature cache; null: the node's cores
    # shared among its workers (small models can be faster on one thread than on two)
    cpu_threads: int | None = None
    # Ray's CPU accounting for one CPU worker: below 1 lets runs of one-thread workers train side
    # by side on a node and still leave a CPU to their featurisation tasks (the demo's students)
    cpus_per_worker: float = 1.0

    def validate(self) -> None:
        if self.num_workers < 1 or self.max_failures < 0:
            raise ValueError("num_workers must be >= 1 and max_failures >= 0")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError("cpu_threads must be >= 1 (or null: the node's cores)")
        if not self.cpus_per_worker > 0:
            raise ValueError("cpus_per_worker must be > 0")


@dataclass
class _RecipeShell:
    """A recipe as read from YAML, before the model section is parsed by its `type` keys."""

    model: dict
    tokenizer: TokenizerRecipe = field(default_factory=TokenizerRecipe)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    scaling: ScalingRecipe = field(default_factory=ScalingRecipe)
    kd: KDConfig | None = None         # distillation's settings (None: KDConfig's defaults)
    name: str = ""
    description: str = ""


@dataclass
class Recipe(_RecipeShell):
    model: ModelConfig

    def to_dict(self) -> dict:
        out = asdict(self)
        out["model"] = self.model.to_dict()
        return out


def recipe_from_dict(data: Any, where: str = "") -> Recipe:
    shell = from_dict(_RecipeShell, data, where)
    model = ModelConfig.from_dict(shell.model, f"{where}.model" if where else "model")
    return Recipe(**{**vars(shell), "model": model})


def load_recipe(path: str | Path, overrides: dict[str, dict[str, Any]] | None = None) -> Recipe:
    """Read a YAML recipe; `overrides` (section -> key -> value) are validated like the file."""
    data = load_yaml(path)
    for section, values in (overrides or {}).items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            current = data.get(section) or {}
            if not isinstance(current, dict):
                raise ConfigError(f"{path}: {section}: expected a mapping")
            data[section] = {**current, **values}
    try:
        recipe = recipe_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not recipe.name:
        recipe.name = Path(path).stem
    return recipe
