"""The built-in corpus: general English and read-news sentences spoken by several TTS engines.

Speakers are `voices.Voice`s of espeak-ng, flite and festival (engine x voice x rate x pitch).
Train hears all of them, through augmentations (room reverberation, noise, a fifth of them a
telephone band); dev and test are spoken by held-out settings of flite's CMU ARCTIC voices (slt,
rms, awb: statistical parametric voices trained on recordings of people), in quiet rooms,
the way LibriSpeech's test-clean is read. espeak-ng's formant voices and the diphone voices
speak training utterances only: more speakers to learn from, but not speech that a recogniser
trained on people reads well (Whisper tiny.en: espeak-ng 54%, the diphone voices 29-35% WER on
clean full sentences; slt/rms/awb 17%). `test_unseen_engine` is spoken by Piper's neural voice,
an engine that no training utterance uses. Degradations are seeded per utterance, so the corpus
is deterministic for a seed.

Half the sentences are clauses of the King James Bible (`general_english`, ~12k words), half
come from the read-news grammar (`news_grammar`, ~1.3k words); both in `spoken_form`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF

from common.audio import SAMPLE_RATE, encode_flac
from common.corpora import general_english
from common.corpora.manifest import Utterance
from common.corpora.news_grammar import sentence
from common.corpora.voices import SynthError, Voice, engine_voices, speak

# the training engines and the share of each split's utterances they speak
ENGINE_SHARES = {"espeak-ng": 0.3, "flite": 0.45, "festival": 0.25}
UNSEEN_ENGINE = "piper"
UNSEEN_SPLIT = "test_unseen_engine"
UNTRANSCRIBED = "untranscribed"   # extra training audio whose manifest text is empty
GENERAL_SHARE = 0.5               # sentences from the KJV; the rest from the news grammar
# the voices that dev and test speakers are drawn from, and the share of their settings that
# dev and test get each (train keeps the rest, and every other voice)
HELD_OUT_VOICES = {"flite": ("slt", "rms", "awb")}
HELD_OUT_SHARE = 0.2


@dataclass(frozen=True)
class Channel:
    """The room and line an utterance is heard through (ranges are uniform draws)."""

    rt60_s: tuple[float, float]      # reverberation time
    wet: tuple[float, float]         # share of the reverberant signal
    snr_db: tuple[float, float]      # white noise
    telephone: float                 # share of utterances through a telephone band


TRAIN_CHANNEL = Channel(rt60_s=(0.1, 0.4), wet=(0.1, 0.35), snr_db=(15, 30), telephone=0.2)
QUIET_CHANNEL = Channel(rt60_s=(0.1, 0.3), wet=(0.05, 0.2), snr_db=(25, 40), telephone=0.0)

__all__ = ["SynthError", "UNSEEN_SPLIT", "UNTRANSCRIBED", "plan", "make_utterance", "split_speakers"]


def split_speakers(seed: int, splits: list[str]) -> dict[str, dict[str, list[Voice]]]:
    """Disjoint speakers per split: dev and test each get a share of the settings of the
    `HELD_OUT_VOICES`, train the rest of every training engine's; `test_unseen_engine` gets Piper's."""
    out: dict[str, dict[str, list[Voice]]] = {s: {} for s in splits}
    held_out = [s for s in splits if s in ("dev", "test")]
    for engine in ENGINE_SHARES:
        pool = engine_voices(engine)
        eligible = [v for v in pool if v.name in HELD_OUT_VOICES.get(engine, ())]
        random.Random(f"{seed}-{engine}").shuffle(eligible)
        k = max(1, round(HELD_OUT_SHARE * len(eligible))) if eligible else 0
        if eligible and len(eligible) < k * len(held_out) + 1:
            raise SynthError(f"{engine} has {len(eligible)} speakers to hold out, too few for train, dev and test")
        for i, split in enumerate(held_out):
            if k:
                out[split][engine] = eligible[i * k:(i + 1) * k]
        if "train" in out:
            taken = {v for split in held_out for v in out[split].get(engine, [])}
            out["train"][engine] = [v for v in pool if v not in taken]
    if UNSEEN_SPLIT in out:
        out[UNSEEN_SPLIT] = {UNSEEN_ENGINE: engine_voices(UNSEEN_ENGINE)}
    return out


def degrade(wave: torch.Tensor, rng: np.random.Generator, channel: Channel = TRAIN_CHANNEL) -> torch.Tensor:
    """Room reverberation, for a share of utterances a telephone band (300-3,400 Hz), and white
    noise, drawn from `channel`'s ranges; then peak-normalise."""
    x = wave.numpy().astype(np.float64)
    rt60 = rng.uniform(*channel.rt60_s)
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0
    wet = rng.uniform(*channel.wet)
    reverb = _convolve(x, ir / np.abs(ir).sum() * 8)
    y = (1 - wet) * x + wet * reverb
    if rng.random() < channel.telephone:
        y = _telephone(y)
    snr_db = rng.uniform(*channel.snr_db)
    noise = rng.standard_normal(len(y))
    noise *= np.sqrt(np.mean(y ** 2) / (10 ** (snr_db / 10)) / max(np.mean(noise ** 2), 1e-12))
    y = y + noise
    y *= 0.9 / max(np.abs(y).max(), 1e-9)
    return torch.from_numpy(y.astype(np.float32))


def _telephone(x: np.ndarray) -> np.ndarray:
    """A narrow-band channel: through 8 kHz sampling (nothing above 4 kHz) and a 300 Hz high-pass."""
    wave = torch.from_numpy(x)
    narrow = AF.resample(AF.resample(wave, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)[: len(x)]
    return AF.highpass_biquad(narrow, SAMPLE_RATE, 300.0).numpy()


def _convolve(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """`np.convolve(x, ir)[:len(x)]` by FFT: a 0.4 s room response is 6,400 taps."""
    size = 1 << (len(x) + len(ir) - 2).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: len(x)]


def make_utterance(split: str, index: int, text: str, voice: Voice, seed: int) -> Utterance:
    rng = np.random.default_rng([seed, index, sum(map(ord, split))])
    channel = TRAIN_CHANNEL if split in ("train", UNTRANSCRIBED) else QUIET_CHANNEL
    wave = degrade(speak(text, voice), rng, channel)
    return Utterance(utt_id=f"{split}-{voice.speaker}-{index:06d}", speaker=voice.speaker,
                     split=split, duration_s=wave.numel() / SAMPLE_RATE, sample_rate=SAMPLE_RATE,
                     audio=encode_flac(wave), text="" if split == UNTRANSCRIBED else text)


def phrase(rng: random.Random, max_words: int | None = None) -> str:
    """A sentence (of the KJV or the news grammar), or with `max_words` a window of
    2..max_words of its words: short utterances that an attention model learns to align in
    minutes on a CPU (the demo's corpus)."""
    if rng.random() < GENERAL_SHARE:
        text = rng.choice(general_english.sentences())
    else:
        text = sentence(rng)
    words = text.split()
    if max_words is None or len(words) <= max_words:
        return text
    n = rng.randint(min(2, max_words), max_words)
    start = rng.randint(0, len(words) - n)
    return " ".join(words[start:start + n])


class _Speakers:
    """Hands out a split's speakers: an engine by its share, then that engine's next speaker."""

    def __init__(self, by_engine: dict[str, list[Voice]]) -> None:
        self.by_engine, self.used = by_engine, defaultdict(int)
        self.engines = list(by_engine)
        self.weights = [ENGINE_SHARES.get(e, 1.0) for e in self.engines]

    def next(self, rng: random.Random) -> Voice:
        engine = rng.choices(self.engines, self.weights)[0]
        voices = self.by_engine[engine]
        self.used[engine] += 1
        return voices[(self.used[engine] - 1) % len(voices)]


def plan(counts: dict[str, int], seed: int, unseen_test_fraction: float = 0.5,
         max_words: int | None = None) -> list[tuple]:
    """(split, index, text, voice) for every utterance; part of the test splits' sentences
    never occur in train.

    An `untranscribed` split is more audio of the training speakers, of fresh phrases, whose
    text the manifest leaves empty (what a teacher labels for KD); adding it leaves the other
    splits exactly as they are without it.
    """
    extra = counts.get(UNTRANSCRIBED, 0)
    counts = {k: v for k, v in counts.items() if k != UNTRANSCRIBED}
    speakers = split_speakers(seed, list(counts) + (["train"] if extra else []))
    train_rng = random.Random(seed)
    jobs, train_texts = [], []
    if "train" in counts:
        pick = _Speakers(speakers["train"])
        train_texts = [phrase(train_rng, max_words) for _ in range(counts["train"])]
        jobs = [("train", i, t, pick.next(train_rng)) for i, t in enumerate(train_texts)]
    seen = set(train_texts)
    for split in [s for s in counts if s != "train"]:
        rng = random.Random(f"{seed}-{split}")
        pick = _Speakers(speakers[split])
        for i in range(counts[split]):
            if split.startswith("test") and train_texts and rng.random() > unseen_test_fraction:
                text = rng.choice(train_texts)
            else:
                text = phrase(rng, max_words)
                while text in seen:
                    text = phrase(rng, max_words)
            jobs.append((split, i, text, pick.next(rng)))
    if extra:
        rng = random.Random(f"{seed}-{UNTRANSCRIBED}")
        pick = _Speakers(speakers["train"])
        jobs += [(UNTRANSCRIBED, i, phrase(rng, max_words), pick.next(rng)) for i in range(extra)]
    return jobs
