"""Whisper in CTranslate2 format (the files faster-whisper loads): its front end and decoding.

A directory made by `ct2-transformers-converter` holds `model.bin`, `config.json`,
`tokenizer.json` and `vocabulary.txt`. Whisper reads 30-s windows of an 80- (or 128-) bin
log-mel spectrogram; `log_mel` computes it the way openai-whisper's `audio.log_mel_spectrogram`
does (Slaney mel filters, the last STFT frame dropped, log10 clamped 8 below the maximum).
Audio longer than one window is refused: seqkd's utterances are sentences, not hours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from common.audio import SAMPLE_RATE

WINDOW_S = 30
N_FFT, HOP = 400, 160
FRAMES = WINDOW_S * SAMPLE_RATE // HOP          # 3000
FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")


class WhisperError(RuntimeError):
    """Not a Whisper CTranslate2 directory, or audio it cannot read."""


def is_whisper_dir(path: str | Path) -> bool:
    return all((Path(path) / f).is_file() for f in ("model.bin", "config.json", "tokenizer.json"))


def log_mel(wave: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """(T,) 16 kHz -> (n_mels, 3000) Whisper log-mel, zero-padded to one 30-s window."""
    if wave.numel() > WINDOW_S * SAMPLE_RATE:
        raise WhisperError(f"audio is {wave.numel() / SAMPLE_RATE:.1f} s long; Whisper reads at "
                           f"most {WINDOW_S} s at a time")
    padded = torch.nn.functional.pad(wave.float(), (0, WINDOW_S * SAMPLE_RATE - wave.numel()))
    spec = torch.stft(padded, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = spec[..., :-1].abs() ** 2                                    # (201, 3000)
    mel = _filters(n_mels) @ power
    logs = torch.clamp(mel, min=1e-10).log10()
    logs = torch.maximum(logs, logs.max() - 8.0)
    return (logs + 4.0) / 4.0


def _filters(n_mels: int) -> torch.Tensor:
    """(n_mels, 201) Slaney-normalised mel filters on the Slaney scale (librosa's defaults,
    which openai-whisper ships as mel_filters.npz)."""
    fb = torchaudio.functional.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, n_mels,
                                               SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    return fb.T


@dataclass
class Hypothesis:
    text: str          # Whisper's own text, cased and punctuated
    score: float       # the sum of token log-probs CTranslate2 reports


class WhisperModel:
    """A CTranslate2 Whisper: batched beam search over 30-s windows, English-only or with a
    language token."""

    def __init__(self, path: str | Path, device: str = "cpu", compute_type: str = "int8",
                 threads: int = 1, language: str | None = None) -> None:
        import ctranslate2
        from tokenizers import Tokenizer

        path = Path(path)
        missing = [f for f in FILES[:3] if not (path / f).is_file()]
        if missing:
            raise WhisperError(f"{path} is not a Whisper CTranslate2 directory: no {', '.join(missing)}")
        try:
            self.model = ctranslate2.models.Whisper(str(path), device=device, compute_type=compute_type,
                                                    intra_threads=threads)
            self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            config = json.loads((path / "config.json").read_text())
        except (RuntimeError, ValueError, OSError) as exc:
            raise WhisperError(f"{path}: damaged Whisper directory ({str(exc).splitlines()[0][:160]})") from None
        self.n_mels = int(config.get("num_mel_bins", 80) or 80)
        if self.model.is_multilingual:
            self.prompt = ["<|startoftranscript|>", f"<|{language or 'en'}|>", "<|transcribe|>",
                           "<|notimestamps|>"]
        elif language not in (None, "en"):
            raise WhisperError(f"{path} is an English-only Whisper; it cannot read {language!r}")
        else:
            self.prompt = ["<|startoftranscript|>", "<|notimestamps|>"]

    def transcribe(self, waves: list[torch.Tensor], beam: int = 5, nbest: int = 1) -> list[list[Hypothesis]]:
        """One generate call for the batch: per utterance its `nbest` hypotheses, best first."""
        import ctranslate2

        feats = np.stack([log_mel(w, self.n_mels).numpy() for w in waves])   # (B, n_mels, 3000)
        results = self.model.generate(ctranslate2.StorageView.from_array(feats),
                                      [self.prompt] * len(waves), beam_size=beam,
                                      num_hypotheses=nbest, return_scores=True)
        return [[Hypothesis(self.tokenizer.decode(ids).strip(), float(score))
                 for ids, score in zip(r.sequences_ids, r.scores)] for r in results]
