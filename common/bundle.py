"""Model bundles: a directory that is everything needed to run a model, and nothing executable.

  model.safetensors  weights (safetensors: loading never unpickles)
  config.yaml        model + feature config, vocabulary size
  tokenizer.model    sentencepiece model
  cmvn.safetensors   global CMVN mean/std
  meta.json          parameter count, training data, scores; bundle id

The bundle id (teacher id) is a hash of the files that define the model's outputs, so a
pseudo-label shard can name exactly which teacher wrote it.

An *exported* directory (`seqkd export`, `common/export.py`) is the same model with ONNX graphs
in place of the weights; every command that takes a bundle takes one (`load_model`):

  encoder.onnx       feats, lens -> enc_lens, ctc_logp, the decoder's frame memory
  decoder.onnx       one decoder step: tokens, state, memory -> logp, next state
  config.yaml, tokenizer.model, cmvn.safetensors   copied from the source bundle
  meta.json          format + format_version, source_bundle_id, precision, sizes, each file's
                     sha256, the graphs' state and memory names; the source bundle's meta
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
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
EXPORT_FORMAT, EXPORT_VERSION = "seqkd-onnx", 1
GRAPHS = ("encoder.onnx", "decoder.onnx")
EXPORT_FILES = (*GRAPHS, *FILES[1:])
EXPORT_ID_FILES = EXPORT_FILES[:5]
SEQKD_KIND, EXPORT_KIND = "seqkd", "seqkd-onnx"      # teacher kinds (common/teachers.py)


class BundleError(ValueError):
    """A bundle directory that is missing, incomplete, corrupt or inconsistent."""


@dataclass
class Bundle:
    model: Seq2Seq                 # or, for an exported directory, common.onnx_model.OnnxSeq2Seq
    tokenizer: Tokenizer
    features: FeatureExtractor
    meta: dict[str, Any]
    bundle_id: str
    path: Path | None = None

    @property
    def form(self) -> str:
        return model_form(self.meta)

    @property
    def kind(self) -> str:
        return EXPORT_KIND if self.meta.get("format") == EXPORT_FORMAT else SEQKD_KIND


def save_bundle(path: str | Path, model: Seq2Seq, tokenizer: Tokenizer, features: FeatureExtractor,
                meta: dict[str, Any] | None = None) -> str:
    """Write the bundle atomically (temp dir + rename); return its id."""
    with atomic_dir(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        config = {"model": _unwrap(model).cfg.to_dict(), "features": asdict(features.config),
                  "input_dim": _unwrap(model).input_dim, "vocab_size": _unwrap(model).vocab_size}
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        tokenizer.save(tmp / "tokenizer.model")
        features.cmvn.save(tmp / "cmvn.safetensors")
        bundle_id = files_id(tmp)
        full_meta = {**(meta or {}), "params": _unwrap(model).num_params(), "bundle_id": bundle_id,
                     "vocab_size": tokenizer.vocab_size}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True))
    return bundle_id


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temp directory beside `path` to fill; on success it replaces `path` (rename), on any
    error it is removed: a reader never sees a half-written bundle or export."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class Frontend:
    """What a bundle and its exported form share: config, tokenizer, features, meta."""

    model_cfg: ModelConfig
    input_dim: int
    vocab_size: int
    tokenizer: Tokenizer
    features: FeatureExtractor
    meta: dict[str, Any]


def load_frontend(path: Path, kind: str = "model bundle") -> Frontend:
    """config.yaml, tokenizer.model, cmvn.safetensors and meta.json of a bundle or export, checked."""
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
        raise BundleError(f"corrupt {kind} {path}: {str(exc).splitlines()[0]}") from None
    except (SafetensorError, OSError, KeyError) as exc:
        raise BundleError(f"corrupt {kind} {path}: unreadable CMVN ({exc})") from None
    if tokenizer.vocab_size != raw["vocab_size"]:
        raise BundleError(f"{kind} {path}: tokenizer has {tokenizer.vocab_size} tokens, "
                          f"config says {raw['vocab_size']}")
    if cmvn.mean.shape[0] != feat_cfg.n_mels:
        raise BundleError(f"{kind} {path}: CMVN has {cmvn.mean.shape[0]} dims, features {feat_cfg.n_mels}")
    return Frontend(model_cfg, raw["input_dim"], raw["vocab_size"], tokenizer,
                    FeatureExtractor(feat_cfg, cmvn), meta)


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model bundle not found: {path} is not a directory")
    if is_exported(path):
        raise BundleError(f"{path} is an exported (ONNX) model, not a PyTorch bundle: "
                          f"export from the bundle it was made from")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise BundleError(f"incomplete model bundle {path}: missing {', '.join(missing)}")
    front = load_frontend(path)
    model = Seq2Seq(front.model_cfg, front.input_dim, front.vocab_size)
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
    return Bundle(model=model, tokenizer=front.tokenizer, features=front.features, meta=front.meta,
                  bundle_id=files_id(path), path=path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """A PyTorch bundle, or an exported directory run by ONNX Runtime (on the CPU, whatever
    `device` says): the one place where every command tells the two apart."""
    path = Path(path)
    if path.is_dir() and is_exported(path):
        from common.onnx_model import load_exported   # onnxruntime only for exported models

        return load_exported(path)
    return load_bundle(path, device)


def find_bundle(path: str | Path) -> Path:
    """A bundle directory as given, or the `bundle/` of a training run directory."""
    path = Path(path)
    return path / "bundle" if (path / "bundle").is_dir() else path


def model_name(path: Path) -> str:
    """A run directory's name for RUN/bundle, else the directory's own name (e.g. an export's)."""
    return path.parent.name if path.name == "bundle" else path.name


def bundle_id(path: str | Path) -> str:
    """The id of a bundle or exported directory on disk (what `load_model(...).bundle_id` gives),
    without loading it."""
    path = Path(path)
    names = EXPORT_ID_FILES if is_exported(path) else ID_FILES
    missing = [f for f in names if not (path / f).is_file()]
    if missing:
        raise BundleError(f"model bundle not found or incomplete: {path} (missing {', '.join(missing)})")
    return files_id(path, names)


def is_exported(path: Path) -> bool:
    """An exported directory: it holds a graph, or its meta.json names a format (so one that lost
    its graphs is still reported as a damaged export, not as a bundle without weights)."""
    if any((path / g).is_file() for g in GRAPHS):
        return True
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format" in meta


def read_export_meta(path: Path) -> dict[str, Any]:
    """meta.json of an exported directory, after checking its format version and that every file
    is the one that was exported (sha256): damage fails here, in one line, before ONNX Runtime."""
    missing = [f for f in EXPORT_FILES if not (path / f).is_file()]
    if missing:
        raise BundleError(f"incomplete exported model {path}: missing {', '.join(missing)}")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"corrupt exported model {path}: meta.json: {str(exc).splitlines()[0]}") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise BundleError(f"{path} is not a seqkd export: meta.json has no format {EXPORT_FORMAT!r}")
    if meta.get("format_version") != EXPORT_VERSION:
        raise BundleError(f"exported model {path} has format version {meta.get('format_version')!r}; this "
                          f"seqkd reads version {EXPORT_VERSION}: export it again with `seqkd export`")
    files = meta.get("files")
    if not isinstance(files, dict) or set(files) != set(EXPORT_ID_FILES):
        raise BundleError(f"corrupt exported model {path}: meta.json does not list its files")
    for name in EXPORT_ID_FILES:
        if file_sha256(path / name) != files[name]:
            raise BundleError(f"damaged exported model {path}: {name} is not the file that was exported "
                              f"(sha256 differs from meta.json); export it again")
    return meta


def model_form(meta: dict[str, Any]) -> str:
    """'pytorch fp32', 'onnx fp32' or 'onnx int8', from a bundle's or an export's meta.json."""
    return f"onnx {meta.get('precision', 'fp32')}" if meta.get("format") == EXPORT_FORMAT else "pytorch fp32"


def disk_bytes(path: Path) -> int:
    """Size on disk of a bundle or exported directory: everything one ships."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def _unwrap(model: torch.nn.Module) -> Seq2Seq:
    return getattr(model, "module", model)


def files_id(path: Path, names: tuple[str, ...] = ID_FILES) -> str:
    """A bundle's (or export's) id: the first 16 hex digits of a sha256 over its files' names and bytes."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        _feed(digest, path / name)
    return digest.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    _feed(digest, path)
    return digest.hexdigest()


def _feed(digest: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
