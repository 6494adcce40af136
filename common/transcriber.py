"""Bundle + audio in, N-best out: the decode path shared by the CLI, the service and labeling."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common.audio import DEFAULT_LIMITS, AudioLimits, load_audio
from common.beam_search import (BeamConfig, Hypothesis, beam_search, default_batch_size,
                                length_sorted_batches)
from common.bundle import Bundle, load_model, model_name
from common.device import pick_device
from common.features import pad_features


@dataclass
class NBestEntry:
    text: str                                    # in the corpus's form: what is scored and learnt
    tokens: list[int]                            # the teacher's token ids
    logp: float                                  # total log-probability
    topm_ids: list[list[int]] | None = None      # with BeamConfig.topm: word-level KD targets
    topm_logp: list[list[float]] | None = None
    raw: str | None = None                       # a foreign teacher's own text (Whisper's, cased)

    def as_dict(self) -> dict:
        out = {"text": self.text, "tokens": self.tokens, "logp": self.logp}
        if self.raw is not None:
            out["raw"] = self.raw
        if self.topm_ids is not None:
            out.update(topm_ids=self.topm_ids, topm_logp=self.topm_logp)
        return out


@dataclass
class Transcript:
    text: str
    nbest: list[NBestEntry]
    duration_s: float
    rtf: float = 0.0
    # with BeamConfig.topm: the CTC head's top-M (ids, log-probs) per encoder frame (frame KD)
    ctc_topm: tuple[list[list[int]], list[list[float]]] | None = None

    def as_dict(self) -> dict:
        return {"text": self.text, "nbest": [n.as_dict() for n in self.nbest],
                "duration_s": self.duration_s, "rtf": self.rtf}


class Transcriber:
    """Decodes many utterances in length-sorted batches with the batched beam search."""

    def __init__(self, bundle: Bundle | str | Path, device: str = "auto",
                 limits: AudioLimits = DEFAULT_LIMITS) -> None:
        """`bundle`: a Bundle, a bundle directory or an exported one (ONNX Runtime, CPU only)."""
        self.bundle = bundle if isinstance(bundle, Bundle) else load_model(bundle)
        exported = not isinstance(self.bundle.model, torch.nn.Module)
        self.device = torch.device("cpu") if exported and device == "auto" else pick_device(device)
        self.bundle.model.to(self.device).eval()
        self.limits = limits

    @property
    def sample_rate(self) -> int:
        return self.bundle.features.config.sample_rate

    @property
    def kind(self) -> str:
        return self.bundle.kind

    @property
    def teacher_id(self) -> str:
        return self.bundle.bundle_id

    @property
    def params(self) -> int:
        return self.bundle.model.num_params()

    def describe(self) -> dict:
        """What a service tells its clients of the model (`meta` whole: the service filters it)."""
        b = self.bundle
        return {"model": b.bundle_id, "name": model_name(b.path) if b.path else b.bundle_id,
                "kind": b.kind, "form": b.form, "params": b.model.num_params(),
                "vocab_size": b.tokenizer.vocab_size, "meta": b.meta,
                "config": {"model": b.model.cfg.to_dict(), "features": asdict(b.features.config)},
                "device": str(self.device)}

    @staticmethod
    def normalise(text: str) -> str:
        """A seqkd model writes its training corpus's own form: nothing to change."""
        return text

    def load(self, source: str | Path | bytes) -> torch.Tensor:
        return load_audio(source, self.limits, self.sample_rate)

    def transcribe(self, sources: list[str | Path | bytes], cfg: BeamConfig,
                   batch_size: int | None = None) -> list[Transcript]:
        return self.transcribe_waves([self.load(s) for s in sources], cfg, batch_size)

    @torch.no_grad()
    def transcribe_waves(self, waves: list[torch.Tensor], cfg: BeamConfig,
                         batch_size: int | None = None) -> list[Transcript]:
        """Decode waveforms in length-sorted batches; results come back in input order."""
        batch_size = batch_size or default_batch_size(self.device)
        out: list[Transcript | None] = [None] * len(waves)
        for idx in length_sorted_batches([w.numel() for w in waves], batch_size):
            began = time.perf_counter()
            hyps, ctc = self.decode_features([self.bundle.features(waves[i]) for i in idx], cfg)
            elapsed = time.perf_counter() - began
            seconds = sum(waves[i].numel() for i in idx) / self.sample_rate
            for j, (i, nbest) in enumerate(zip(idx, hyps)):
                out[i] = self._transcript(nbest, waves[i].numel() / self.sample_rate,
                                          elapsed / max(seconds, 1e-9))
                out[i].ctc_topm = ctc[j] if ctc else None
        return [t for t in out if t is not None]

    def decode_features(self, feats: list[torch.Tensor], cfg: BeamConfig
                        ) -> tuple[list[list[Hypothesis]], list[tuple[list, list]] | None]:
        """N-best per utterance; with cfg.topm also the CTC head's top-M per valid frame."""
        padded, lens = pad_features(feats)
        model = self.bundle.model
        enc, enc_lens = model.encode(padded.to(self.device), lens.to(self.device))
        ctc = None
        if cfg.topm:
            lp, ids = model.ctc_log_probs(enc).topk(min(cfg.topm, model.vocab_size), dim=-1)  # (B, T', M)
            ctc = [(ids[u, :n].tolist(), lp[u, :n].tolist()) for u, n in enumerate(enc_lens.tolist())]
        return beam_search(model, enc, enc_lens, cfg), ctc

    def _transcript(self, nbest: list[Hypothesis], duration: float, rtf: float) -> Transcript:
        entries = [NBestEntry(self.bundle.tokenizer.decode(h.tokens), h.tokens, h.logp, h.topm_ids,
                              h.topm_logp) for h in nbest]
        return Transcript(text=entries[0].text, nbest=entries, duration_s=round(duration, 4),
                          rtf=round(rtf, 5))
