"""Model bundles: a directory that is everything needed to run a model, and nothing executable.

  model.safetensors  weights (safetensors: loading never unpickles)
  config.yaml        model + feature config, vocabulary size
  tokenizer.model    sentencepiece model
  cmvn.safetensors   global CMVN mean/std
  meta.json          parameter count, training data, scores; bundle id

The bundle id (teacher id) is a hash of the files that define the model's outputs, so a
pseudo-label shard can name exactly which teacher wrote it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common.config import ConfigError, from_dict
from common.features import CMVN, FeatureConfig, FeatureExtractor
from common.models import ModelConfig, Seq2Seq
from common.tokenizer import Tokenizer, TokenizerError

FILES = ("model.safetensors", "config.yaml", "tokenizer.model", "cmvn.safetensors", "meta.json")
ID_FILES = FILES[:4]


class BundleError(ValueError):
    """A bundle directory that is missing, incomplete, corrupt or inconsistent."""


@dataclass
class Bundle:
    model: Seq2Seq
    tokenizer: Tokenizer
    features: FeatureExtractor
    meta: dict[str, Any]
    bundle_id: str
    path: Path | None = None


def save_bundle(path: str | Path, model: Seq2Seq, tokenizer: Tokenizer, features: FeatureExtractor,
                meta: dict[str, Any] | None = None) -> str:
    """Write the bundle atomically (temp dir + rename); return its id."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        config = {"model": _model_dict(_unwrap(model).cfg), "features": asdict(features.config),
                  "input_dim": _unwrap(model).input_dim, "vocab_size": _unwrap(model).vocab_size}
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        tokenizer.save(tmp / "tokenizer.model")
        features.cmvn.save(tmp / "cmvn.safetensors")
        bundle_id = _hash(tmp)
        full_meta = {**(meta or {}), "params": _unwrap(model).num_params(), "bundle_id": bundle_id,
                     "vocab_size": tokenizer.vocab_size}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bundle_id


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model bundle not found: {path} is not a directory")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise BundleError(f"incomplete model bundle {path}: missing {', '.join(missing)}")
    try:
        raw = yaml.safe_load((path / "config.yaml").read_text())
        if not isinstance(raw, dict) or set(raw) != {"model", "features", "input_dim", "vocab_size"}:
            raise BundleError(f"{path}/config.yaml: expected keys model, features, input_dim, vocab_size")
        model_cfg = ModelConfig.from_dict(raw["model"])
        feat_cfg = from_dict(FeatureConfig, raw["features"], "features")
        tokenizer = Tokenizer.load(path / "tokenizer.model")
        cmvn = CMVN.load(path / "cmvn.safetensors")
        meta = json.loads((path / "meta.json").read_text())
    except (ConfigError, TokenizerError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise BundleError(f"corrupt model bundle {path}: {str(exc).splitlines()[0]}") from None
    except (SafetensorError, OSError, KeyError) as exc:
        raise BundleError(f"corrupt model bundle {path}: unreadable CMVN ({exc})") from None
    if tokenizer.vocab_size != raw["vocab_size"]:
        raise BundleError(f"bundle {path}: tokenizer has {tokenizer.vocab_size} tokens, "
                          f"config says {raw['vocab_size']}")
    if cmvn.mean.shape[0] != feat_cfg.n_mels:
        raise BundleError(f"bundle {path}: CMVN has {cmvn.mean.shape[0]} dims, features {feat_cfg.n_mels}")
    model = Seq2Seq(model_cfg, raw["input_dim"], raw["vocab_size"])
    try:
        state = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"corrupt model bundle {path}: unreadable weights ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise BundleError(f"bundle {path}: weights do not match config.yaml ({first})") from None
    model.to(device).eval()
    return Bundle(model=model, tokenizer=tokenizer, features=FeatureExtractor(feat_cfg, cmvn),
                  meta=meta, bundle_id=_hash(path), path=path)


def find_bundle(path: str | Path) -> Path:
    """A bundle directory as given, or the `bundle/` of a training run directory."""
    path = Path(path)
    return path / "bundle" if (path / "bundle").is_dir() else path


def bundle_id(path: str | Path) -> str:
    """The id of a bundle on disk (what `load_bundle(...).bundle_id` gives), without loading it."""
    path = Path(path)
    missing = [f for f in ID_FILES if not (path / f).is_file()]
    if missing:
        raise BundleError(f"model bundle not found or incomplete: {path} (missing {', '.join(missing)})")
    return _hash(path)


def _unwrap(model: torch.nn.Module) -> Seq2Seq:
    return getattr(model, "module", model)


def _model_dict(cfg: ModelConfig) -> dict:
    return {"encoder": asdict(cfg.encoder), "decoder": asdict(cfg.decoder),
            "ctc_weight": cfg.ctc_weight, "label_smoothing": cfg.label_smoothing}


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    for name in ID_FILES:
        digest.update(name.encode())
        with open(path / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
