"""A Whisper teacher behind the seqkd `Transcriber` interface: audio in, an N-best per utterance out.

Utterances are decoded in length-sorted batches, one CTranslate2 `generate` per batch, so a
teacher fleet (Ray Serve, Ray Data) runs it as it runs a seqkd bundle. Each N-best entry keeps
Whisper's own text (`raw`: cased, punctuated, digits) and gives `text` in the corpus's spoken
form (`common.text.asr_spoken_form`: what a student learns and what WER is scored on), its token
ids in Whisper's vocabulary and its total log-probability. Another language than English (a
multilingual checkpoint, `language=`) is normalised by whisper-normalizer's basic rules instead
(lower case, no punctuation or symbols, every script kept), since seqkd's rules are English.

Decoding settings: `beam`, `nbest` and `length_penalty` mean what they do for a seqkd model
(CTranslate2 divides by the length without the end token); `max_len_ratio` does not apply
(Whisper stops at its 448-token context); Whisper has no CTC head and exposes no per-position
distributions, so `ctc_weight` and `topm` are refused. Audio over 30 s is refused in one line.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from common.audio import DEFAULT_LIMITS, SAMPLE_RATE, AudioLimits, AudioTooLongError, load_audio
from common.beam_search import BeamConfig, default_batch_size, length_sorted_batches
from common.text import asr_spoken_form
from common.transcriber import NBestEntry, Transcript
from common.whisper import KIND, WINDOW_S, Decoded, WhisperModel


class WhisperTranscriber:
    """Decodes many utterances with a Whisper CTranslate2 directory; same calls as `Transcriber`."""

    kind = KIND
    sample_rate = SAMPLE_RATE

    def __init__(self, path: str | Path, device: str = "auto", compute_type: str = "auto",
                 threads: int | None = None, language: str | None = None,
                 limits: AudioLimits = DEFAULT_LIMITS) -> None:
        """`threads`: CTranslate2's intra-op threads (default: as many as torch has)."""
        self.model = WhisperModel(path, device, compute_type, threads or torch.get_num_threads(), language)
        self.device = self.model.device
        self.teacher_id = self.model.dir.teacher_id
        self.params = self.model.dir.params
        self.limits = replace(limits, max_duration_s=min(limits.max_duration_s, WINDOW_S))
        if language in (None, "en"):
            self.normalise = asr_spoken_form
        else:
            from whisper_normalizer.basic import BasicTextNormalizer

            self.normalise = BasicTextNormalizer(preserve_marks=True)

    def describe(self) -> dict:
        """What a service tells its clients of the model, as `Transcriber.describe` does."""
        m = self.model
        return {"model": self.teacher_id, "name": m.dir.path.name, "kind": KIND,
                "form": f"CTranslate2 {m.compute_type}", "params": self.params,
                "vocab_size": m.tokenizer.get_vocab_size(), "meta": {},
                "config": {"multilingual": m.model.is_multilingual, "n_mels": m.model.n_mels,
                           "prompt": m.prompt}, "device": self.device}

    def load(self, source: str | Path | bytes) -> torch.Tensor:
        try:
            return load_audio(source, self.limits, self.sample_rate)
        except AudioTooLongError as exc:
            if self.limits.max_duration_s < WINDOW_S:     # the caller's own, tighter limit
                raise
            raise AudioTooLongError(f"{exc}: Whisper reads one {WINDOW_S}-s window and seqkd does "
                                    f"not chunk", exc.samples_decoded) from None

    def transcribe(self, sources: list[str | Path | bytes], cfg: BeamConfig,
                   batch_size: int | None = None) -> list[Transcript]:
        return self.transcribe_waves([self.load(s) for s in sources], cfg, batch_size)

    def transcribe_waves(self, waves: list[torch.Tensor], cfg: BeamConfig,
                         batch_size: int | None = None) -> list[Transcript]:
        """Decode waveforms in length-sorted batches; results come back in input order."""
        check_config(cfg)
        batch_size = batch_size or default_batch_size(torch.device(self.device))
        out: list[Transcript | None] = [None] * len(waves)
        for idx in length_sorted_batches([w.numel() for w in waves], batch_size):
            began = time.perf_counter()
            decoded = self.model.generate([waves[i] for i in idx], cfg.beam, cfg.nbest, cfg.length_penalty)
            elapsed = time.perf_counter() - began
            seconds = sum(waves[i].numel() for i in idx) / self.sample_rate
            for i, nbest in zip(idx, decoded):
                out[i] = self._transcript(nbest, waves[i].numel() / self.sample_rate,
                                          elapsed / max(seconds, 1e-9))
        return [t for t in out if t is not None]

    def _transcript(self, nbest: list[Decoded], duration: float, rtf: float) -> Transcript:
        """Whisper's N-best often differs only in case or punctuation ("Press 6." / "press six"):
        after normalising, such twins are one target, so only the best of each is kept."""
        entries, seen = [], set()
        for d in nbest:
            text = self.normalise(d.text)
            if text not in seen:
                seen.add(text)
                entries.append(NBestEntry(text, d.ids, d.logp, raw=d.text))
        return Transcript(text=entries[0].text, nbest=entries, duration_s=round(duration, 4),
                          rtf=round(rtf, 5))


def check_config(cfg: BeamConfig) -> None:
    cfg.validate()
    if cfg.ctc_weight:
        raise ValueError("a Whisper teacher has no CTC head: ctc_weight must be 0")
    if cfg.topm:
        raise ValueError("a Whisper teacher gives no per-position distributions: topm must be 0 "
                         "(word- and frame-level KD need a seqkd teacher)")
