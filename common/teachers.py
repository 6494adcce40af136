"""The kinds of teacher seqkd reads, told apart in one place: a directory's kind, its id, and the
transcriber that decodes it.

  seqkd        a seqkd model bundle (common/bundle.py)
  seqkd-onnx   a bundle exported to ONNX (common/export.py)
  whisper-ct2  a Whisper checkpoint in CTranslate2 format (common/whisper.py)

The kind comes from the files a directory holds, before anything is loaded; a directory that
holds none of any kind's files is refused in one line naming what each kind needs, and a damaged
one by its kind's own checks. A teacher id is a hash of the files that define its outputs (for
seqkd kinds `bundle_id`'s; for Whisper model.bin, config.json, tokenizer.json and its vocabulary).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from common import whisper
from common.audio import DEFAULT_LIMITS, AudioLimits
from common.beam_search import BeamConfig
from common.bundle import (EXPORT_FILES, EXPORT_KIND, FILES, SEQKD_KIND, BundleError, bundle_id,
                           is_exported, load_model)
from common.labels import TOKENIZER as SEQKD_TOKENIZER
from common.transcriber import Transcript, Transcriber
from common.whisper_transcriber import check_config as check_whisper_config

KINDS = (SEQKD_KIND, EXPORT_KIND, whisper.KIND)


class TeacherTranscriber(Protocol):
    """What every kind's transcriber offers (`Transcriber`, `WhisperTranscriber`)."""

    kind: str
    teacher_id: str
    params: int
    sample_rate: int

    def load(self, source: str | Path | bytes) -> torch.Tensor: ...

    def transcribe(self, sources: list[str | Path | bytes], cfg: BeamConfig,
                   batch_size: int | None = None) -> list[Transcript]: ...

    def transcribe_waves(self, waves: list[torch.Tensor], cfg: BeamConfig,
                         batch_size: int | None = None) -> list[Transcript]: ...

    def normalise(self, text: str) -> str: ...

    def describe(self) -> dict: ...


def teacher_kind(path: str | Path) -> str:
    """seqkd, seqkd-onnx or whisper-ct2, from the files in `path`; else one BundleError line."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"teacher not found: {path} is not a directory")
    if is_exported(path):
        return EXPORT_KIND
    if any((path / f).is_file() for f in FILES):
        return SEQKD_KIND
    if any((path / f).is_file() for f in (*whisper.FILES, *whisper.VOCABULARIES)):
        return whisper.KIND
    raise BundleError(f"{path} is not a teacher: a seqkd bundle holds {', '.join(FILES)}; an exported "
                      f"one {', '.join(EXPORT_FILES)}; a Whisper CTranslate2 directory "
                      f"{', '.join(whisper.FILES)}")


def teacher_id(path: str | Path) -> str:
    """The id of the teacher in `path`, without loading it."""
    if teacher_kind(path) == whisper.KIND:
        return whisper.check_dir(path).teacher_id
    return bundle_id(path)


@dataclass(frozen=True)
class TeacherFiles:
    """What pseudo labels record of their teacher: its kind, id and tokenizer file (a seqkd
    teacher's sentencepiece `tokenizer.model`, which its students share; Whisper's BPE
    `tokenizer.json`, which no seqkd student can speak, so its students learn their own)."""

    kind: str
    teacher_id: str
    tokenizer_name: str
    tokenizer: bytes

    @property
    def foreign_vocabulary(self) -> bool:
        return self.kind == whisper.KIND

    def check_config(self, cfg: BeamConfig) -> None:
        """A ValueError line for settings this teacher cannot decode with (before any work)."""
        if self.foreign_vocabulary:
            check_whisper_config(cfg)
        else:
            cfg.validate()

    def fitted(self, cfg: BeamConfig) -> BeamConfig:
        """`cfg` less what this teacher lacks (Whisper: the CTC weight and the top-M), so that
        models of every kind are compared at the same beam."""
        return replace(cfg, ctc_weight=0.0, topm=0) if self.foreign_vocabulary else cfg


def teacher_files(path: str | Path) -> TeacherFiles:
    """The teacher of `path`'s kind, id and tokenizer, without loading the model."""
    kind = teacher_kind(path)
    name = whisper.TOKENIZER if kind == whisper.KIND else SEQKD_TOKENIZER
    return TeacherFiles(kind, teacher_id(path), name, (Path(path) / name).read_bytes())


def teacher_meta(path: str | Path) -> dict:
    """A seqkd bundle's meta.json (how it was trained); for a teacher seqkd did not train
    (Whisper), what a report shows of it instead."""
    if teacher_kind(path) == whisper.KIND:
        return {"targets": "pretrained", "recipe": "whisper", "form": "ctranslate2"}
    return json.loads((Path(path) / "meta.json").read_text())


def check_teacher(path: str | Path) -> None:
    """Fail now, in one BundleError line, for a teacher that cannot load (before a fleet starts):
    a seqkd model is loaded; a Whisper directory's files and model.bin's headers are read."""
    if teacher_kind(path) == whisper.KIND:
        whisper.check_dir(path)
    else:
        load_model(path)


def load_transcriber(path: str | Path, device: str = "auto", compute_type: str = "auto",
                     language: str | None = None, threads: int | None = None,
                     limits: AudioLimits = DEFAULT_LIMITS) -> TeacherTranscriber:
    """The transcriber for the teacher in `path`, whatever its kind. `compute_type` (int8,
    float16, float32; auto: int8 on a CPU, float16 on a GPU), `language` (multilingual
    checkpoints; default English) and `threads` (default: torch's) are Whisper's; a seqkd model
    given a compute type or a language is refused rather than decoded without them."""
    if teacher_kind(path) == whisper.KIND:
        from common.whisper_transcriber import WhisperTranscriber   # ctranslate2 only for Whisper

        return WhisperTranscriber(path, device, compute_type, threads, language, limits)
    if compute_type != "auto" or language is not None:
        raise BundleError(f"{path} is a seqkd model: the compute type and language options are for "
                          f"Whisper teachers")
    return Transcriber(path, device=device, limits=limits)
