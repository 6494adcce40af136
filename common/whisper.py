"""Whisper in CTranslate2 format (the files faster-whisper loads): its directory, front end and decoding.

A directory made by `ct2-transformers-converter` holds `model.bin`, `config.json`,
`tokenizer.json` and `vocabulary.txt` (`vocabulary.json` from newer converters). It is checked
before CTranslate2 reads it: a missing file, a `config.json` that is not a JSON object, a
`model.bin` that is not a Whisper, of another binary version, or cut short, is one `WhisperError`
line (a `BundleError`, so every command that reports a bad bundle reports it).

Whisper reads 30-s windows of an 80- (or 128-) bin log-mel spectrogram; `log_mel` computes it as
openai-whisper's `audio.log_mel_spectrogram` does: the audio padded with silence to 30 s before the
STFT (Slaney mel filters, the last STFT frame dropped, log10 clamped 8 below the maximum),
which is the input Whisper was trained on. faster-whisper's transcribe pads differently: it
computes the log-mel of the audio alone (plus 160 zero samples) and pads the *spectrogram* with
0.0 to 3000 frames; the frames that cover the audio are the same, the ones after it are not
(`tests/test_whisper_teacher.py` checks both). Audio longer than one window is refused in one
line (`AudioTooLongError`): seqkd's utterances are sentences, and it does not chunk.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from common.audio import SAMPLE_RATE, AudioTooLongError
from common.bundle import BundleError, files_id

WINDOW_S = 30
N_FFT, HOP = 400, 160
FRAMES = WINDOW_S * SAMPLE_RATE // HOP          # 3000
WEIGHTS, CONFIG, TOKENIZER = "model.bin", "config.json", "tokenizer.json"
VOCABULARIES = ("vocabulary.txt", "vocabulary.json")
FILES = (WEIGHTS, CONFIG, TOKENIZER, VOCABULARIES[0])
BINARY_VERSION, SPEC = 6, "WhisperSpec"          # what CTranslate2 4.x's converter writes
COMPUTE_TYPES = ("auto", "int8", "float16", "float32")
KIND = "whisper-ct2"                             # its teacher kind (common/teachers.py)


class WhisperError(BundleError):
    """A Whisper CTranslate2 directory that is incomplete, damaged or not a Whisper."""


def log_mel(wave: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """(T,) 16 kHz -> (n_mels, 3000) Whisper log-mel of the audio padded with silence to 30 s."""
    check_length(wave.numel())
    padded = torch.nn.functional.pad(wave.float(), (0, WINDOW_S * SAMPLE_RATE - wave.numel()))
    spec = torch.stft(padded, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = spec[..., :-1].abs() ** 2                                    # (201, 3000)
    mel = _filters(n_mels) @ power
    logs = torch.clamp(mel, min=1e-10).log10()
    logs = torch.maximum(logs, logs.max() - 8.0)
    return (logs + 4.0) / 4.0


def check_length(samples: int) -> None:
    if samples > WINDOW_S * SAMPLE_RATE:
        raise AudioTooLongError(f"audio is {samples / SAMPLE_RATE:.1f} s long; Whisper reads one "
                                f"{WINDOW_S}-s window and seqkd does not chunk")


def _filters(n_mels: int) -> torch.Tensor:
    """(n_mels, 201) Slaney-normalised mel filters on the Slaney scale (librosa's defaults,
    which openai-whisper ships as mel_filters.npz)."""
    fb = torchaudio.functional.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels,
                                               SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    return fb.T


# ------------------------------------------------------------------ the directory
@dataclass(frozen=True)
class WhisperDir:
    """A checked Whisper directory: the files that define its outputs (its id hashes them) and
    its parameter count."""

    path: Path
    files: tuple[str, ...]
    params: int

    @property
    def teacher_id(self) -> str:
        return files_id(self.path, self.files)


def check_dir(path: str | Path) -> WhisperDir:
    """Every file present, config.json a JSON object, model.bin a whole Whisper; else one line."""
    path = Path(path)
    vocab = next((v for v in VOCABULARIES if (path / v).is_file()), VOCABULARIES[0])
    names = (WEIGHTS, CONFIG, TOKENIZER, vocab)
    missing = [f for f in names if not (path / f).is_file()]
    if missing:
        raise WhisperError(f"incomplete Whisper directory {path}: missing {', '.join(missing)}")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (ValueError, OSError) as exc:
        raise WhisperError(f"damaged Whisper directory {path}: {CONFIG} is not JSON "
                           f"({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise WhisperError(f"damaged Whisper directory {path}: {CONFIG} is not a JSON object")
    return WhisperDir(path, names, _count_params(path / WEIGHTS))


def _count_params(weights: Path) -> int:
    """Elements of model.bin's tensors (not its scalar settings or int8 scales), reading only its
    headers (CTranslate2's layout: version, spec name, revision, then name, shape, dtype and
    byte count of each variable); a file that ends before its last variable is refused here."""
    size = weights.stat().st_size
    with open(weights, "rb") as f:
        def take(fmt: str):
            raw = f.read(struct.calcsize(fmt))
            if len(raw) < struct.calcsize(fmt):
                raise WhisperError(f"damaged Whisper directory {weights.parent}: {WEIGHTS} is truncated "
                                   f"({size:,} bytes)")
            return struct.unpack("<" + fmt, raw)[0]

        def name() -> str:
            return f.read(take("H"))[:-1].decode("utf-8", "replace")

        version = take("I")
        if version != BINARY_VERSION:
            raise WhisperError(f"{weights} is not a CTranslate2 model of binary version {BINARY_VERSION} "
                               f"(its header says {version}): convert the checkpoint with CTranslate2 4's "
                               f"ct2-transformers-converter")
        spec = name()
        if spec != SPEC:
            raise WhisperError(f"{weights} is a CTranslate2 {spec}, not a Whisper")
        take("I")                                                        # spec revision
        params = 0
        for _ in range(take("I")):
            var, shape = name(), [take("I") for _ in range(take("B"))]
            take("B")                                                    # dtype
            nbytes = take("I")
            if f.seek(nbytes, 1) > size:
                raise WhisperError(f"damaged Whisper directory {weights.parent}: {WEIGHTS} is truncated "
                                   f"({size:,} bytes; it ends inside {var})")
            if shape and not var.endswith("weight_scale"):
                params += math.prod(shape)
        take("I")                                                        # alias count
    return params


def prompt(multilingual: bool, language: str | None, vocabulary: set[str], path: Path) -> list[str]:
    """The decoder's prompt: start, then (multilingual checkpoints) the language and the task, no
    timestamps. English unless `language` says otherwise; an English-only model reads English."""
    if not multilingual:
        if language not in (None, "en"):
            raise WhisperError(f"{path} is an English-only Whisper; it cannot transcribe {language!r}")
        return ["<|startoftranscript|>", "<|notimestamps|>"]
    token = f"<|{language or 'en'}|>"
    if token not in vocabulary:
        raise WhisperError(f"{path}: Whisper has no language {language!r} (no {token} token)")
    return ["<|startoftranscript|>", token, "<|transcribe|>", "<|notimestamps|>"]


def ct2_device(requested: str) -> tuple[str, int]:
    """auto (the GPU when CTranslate2 sees one), cpu, cuda, cuda:N -> CTranslate2's (device, index)."""
    import ctranslate2

    if requested == "auto":
        return ("cuda" if ctranslate2.get_cuda_device_count() else "cpu"), 0
    kind, _, index = requested.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise ValueError(f"unknown device {requested!r}: auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not ctranslate2.get_cuda_device_count():
        raise ValueError("CUDA was requested but CTranslate2 sees no GPU")
    return kind, int(index or 0)


# ------------------------------------------------------------------ the model
@dataclass
class Decoded:
    ids: list[int]     # Whisper token ids, without the prompt or <|endoftext|>
    text: str          # Whisper's own text, cased and punctuated
    logp: float        # total log-probability of the hypothesis


class WhisperModel:
    """A CTranslate2 Whisper: batched beam search over 30-s windows, English-only or with a
    language token; nothing is downloaded."""

    def __init__(self, path: str | Path, device: str = "auto", compute_type: str = "auto",
                 threads: int = 1, language: str | None = None) -> None:
        import ctranslate2
        from tokenizers import Tokenizer

        self.dir = check_dir(path)
        if compute_type not in COMPUTE_TYPES:
            raise ValueError(f"unknown compute type {compute_type!r}: {', '.join(COMPUTE_TYPES)}")
        kind, index = ct2_device(device)
        if compute_type == "auto":
            compute_type = "int8" if kind == "cpu" else "float16"
        self.device = f"{kind}:{index}" if kind == "cuda" else kind
        try:
            self.tokenizer = Tokenizer.from_file(str(self.dir.path / TOKENIZER))
        except Exception as exc:             # tokenizers raises a plain Exception for a bad file
            raise WhisperError(f"damaged Whisper directory {self.dir.path}: {TOKENIZER}: "
                               f"{str(exc).splitlines()[0][:200]}") from None
        try:
            self.model = ctranslate2.models.Whisper(str(self.dir.path), device=kind, device_index=index,
                                                    compute_type=compute_type, intra_threads=threads)
        except ValueError as exc:            # a compute type this device cannot run
            raise ValueError(f"{self.dir.path}: {str(exc).splitlines()[0]}") from None
        except RuntimeError as exc:
            raise WhisperError(f"damaged Whisper directory {self.dir.path}: "
                               f"{str(exc).splitlines()[0][:200]}") from None
        self.compute_type = compute_type
        self.prompt = prompt(self.model.is_multilingual, language, set(self.tokenizer.get_vocab()),
                             self.dir.path)

    def generate(self, waves: list[torch.Tensor], beam: int = 5, nbest: int = 1,
                 length_penalty: float = 1.0) -> list[list[Decoded]]:
        """One `generate` call for the batch: per utterance its `nbest` hypotheses, best first.

        CTranslate2's score is the total log-probability divided by (tokens, without the end
        token) ** length_penalty; `logp` undoes that division."""
        import ctranslate2

        feats = np.stack([log_mel(w, self.model.n_mels).numpy() for w in waves])   # (B, n_mels, 3000)
        results = self.model.generate(ctranslate2.StorageView.from_array(feats), [self.prompt] * len(waves),
                                      beam_size=beam, num_hypotheses=nbest, length_penalty=length_penalty,
                                      return_scores=True)
        return [[Decoded(ids, self.tokenizer.decode(ids).strip(),
                         float(score) * max(len(ids), 1) ** length_penalty)
                 for ids, score in zip(r.sequences_ids, r.scores)] for r in results]
