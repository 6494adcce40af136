"""The built-in corpus: read-news sentences spoken by espeak-ng, so seqkd runs with no download.

Speakers are espeak-ng voice settings (accent x variant x speed x pitch); train, dev and
test speakers are disjoint. Each utterance gets mild reverberation and noise, seeded per
utterance, so the corpus is deterministic for a seed and not trivially clean.
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.audio import SAMPLE_RATE, encode_flac, load_audio
from common.corpora.manifest import Utterance
from common.corpora.news_grammar import sentence

ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4", "f5"]
SPEEDS = [145, 165, 185]
PITCHES = [35, 50, 65]
UNTRANSCRIBED = "untranscribed"   # extra training audio whose manifest text is empty


class SynthError(RuntimeError):
    """espeak-ng is missing or failed."""


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: str
    speed: int
    pitch: int

    @property
    def speaker(self) -> str:
        return f"{self.accent}-{self.variant}-s{self.speed}-p{self.pitch}"


def voices(seed: int) -> list[Voice]:
    """Every voice setting, in a seeded order (so speaker splits are deterministic)."""
    all_voices = [Voice(a, v, s, p) for a in ACCENTS for v in VARIANTS for s in SPEEDS for p in PITCHES]
    random.Random(seed).shuffle(all_voices)
    return all_voices


def split_speakers(seed: int, counts: dict[str, int]) -> dict[str, list[Voice]]:
    """Disjoint voice sets per split: 4 utterances per voice, more when voices run short."""
    pool = voices(seed)
    per_voice = max(4, math.ceil(sum(counts.values()) / (0.9 * len(pool))))
    out, start = {}, 0
    for split, n in counts.items():
        k = max(2, min(n, math.ceil(n / per_voice)))
        out[split] = pool[start:start + k]
        start += k
    if start > len(pool):
        raise SynthError(f"asked for {start} speakers; the synthetic corpus has {len(pool)}")
    return out


def speak(text: str, voice: Voice) -> torch.Tensor:
    """espeak-ng -> 16 kHz float waveform."""
    if shutil.which("espeak-ng") is None:
        raise SynthError("espeak-ng is not installed (`make test` / `make demo` install it)")
    with tempfile.TemporaryDirectory() as tmp:  # --stdout writes a streaming (sizeless) header
        path = Path(tmp) / "utt.wav"
        cmd = ["espeak-ng", "-v", f"{voice.accent}+{voice.variant}", "-s", str(voice.speed),
               "-p", str(voice.pitch), "-w", str(path), text]
        done = subprocess.run(cmd, capture_output=True, timeout=60)
        if done.returncode != 0 or not path.exists():
            raise SynthError(f"espeak-ng failed for voice {voice.speaker}: {done.stderr.decode()[:200]}")
        return load_audio(path)


def degrade(wave: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Mild room reverberation (RT60 0.1-0.4 s) and noise (SNR 15-30 dB), then peak-normalise."""
    x = wave.numpy().astype(np.float64)
    rt60 = rng.uniform(0.1, 0.4)
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0
    wet = rng.uniform(0.1, 0.35)
    reverb = _convolve(x, ir / np.abs(ir).sum() * 8)
    y = (1 - wet) * x + wet * reverb
    snr_db = rng.uniform(15, 30)
    noise = rng.standard_normal(len(y))
    noise *= np.sqrt(np.mean(y ** 2) / (10 ** (snr_db / 10)) / max(np.mean(noise ** 2), 1e-12))
    y = y + noise
    y *= 0.9 / max(np.abs(y).max(), 1e-9)
    return torch.from_numpy(y.astype(np.float32))


def _convolve(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """`np.convolve(x, ir)[:len(x)]` by FFT: a 0.4 s room response is 6,400 taps."""
    size = 1 << (len(x) + len(ir) - 2).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: len(x)]


def make_utterance(split: str, index: int, text: str, voice: Voice, seed: int) -> Utterance:
    rng = np.random.default_rng([seed, index, sum(map(ord, split))])
    wave = degrade(speak(text, voice), rng)
    return Utterance(utt_id=f"{split}-{voice.speaker}-{index:06d}", speaker=voice.speaker,
                     split=split, duration_s=wave.numel() / SAMPLE_RATE, sample_rate=SAMPLE_RATE,
                     audio=encode_flac(wave), text="" if split == UNTRANSCRIBED else text)


def phrase(rng: random.Random, max_words: int | None = None) -> str:
    """A sentence, or with `max_words` a window of 2..max_words of its words: short utterances
    that an attention model learns to align in minutes on a CPU (the demo's corpus)."""
    text = sentence(rng)
    words = text.split()
    if max_words is None or len(words) <= max_words:
        return text
    n = rng.randint(min(2, max_words), max_words)
    start = rng.randint(0, len(words) - n)
    return " ".join(words[start:start + n])


def plan(counts: dict[str, int], seed: int, unseen_test_fraction: float = 0.5,
         max_words: int | None = None) -> list[tuple]:
    """(split, index, text, voice) for every utterance; part of test's sentences never occur in train.

    An `untranscribed` split is more audio of the training speakers, of fresh phrases, whose
    text the manifest leaves empty (what a teacher labels for KD); adding it leaves the other
    splits exactly as they are without it.
    """
    extra = counts.get(UNTRANSCRIBED, 0)
    counts = {k: v for k, v in counts.items() if k != UNTRANSCRIBED}
    speakers = split_speakers(seed, counts)
    train_rng = random.Random(seed)
    train_texts = [phrase(train_rng, max_words) for _ in range(counts.get("train", 0))]
    jobs = [("train", i, t, speakers["train"][i % len(speakers["train"])])
            for i, t in enumerate(train_texts)] if "train" in counts else []
    seen = set(train_texts)
    for split in [s for s in counts if s != "train"]:
        rng = random.Random(f"{seed}-{split}")
        for i in range(counts[split]):
            if split == "test" and train_texts and rng.random() > unseen_test_fraction:
                text = rng.choice(train_texts)
            else:
                text = phrase(rng, max_words)
                while text in seen:
                    text = phrase(rng, max_words)
            jobs.append((split, i, text, speakers[split][i % len(speakers[split])]))
    if extra:
        rng = random.Random(f"{seed}-{UNTRANSCRIBED}")
        train_voices = speakers.get("train") or voices(seed)
        jobs += [(UNTRANSCRIBED, i, phrase(rng, max_words), train_voices[i % len(train_voices)])
                 for i in range(extra)]
    return jobs
