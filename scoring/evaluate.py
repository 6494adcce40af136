"""Decode a manifest with a teacher or student and score it: WER, CER, error counts, parameters, RTF.

Scoring compares the 1-best against the transcript with WSJ's non-language symbols removed (as
ESPnet scores WSJ; for other corpora a no-op), both in the model's normalised form: a seqkd
model's output is already in its corpus's form, a Whisper's goes through its normaliser
(`common.whisper_transcriber`), and so does the transcript, so that both sides are compared
under the same spelling rules.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from common.audio import AudioError
from common.beam_search import BeamConfig
from common.corpora.manifest import iter_rows
from common.metrics import ErrorRates, error_rates
from common.teachers import load_transcriber
from common.text import target_text


@dataclass
class Evaluation:
    rates: ErrorRates
    params: int
    rtf: float
    utterances: int
    audio_s: float
    decode_s: float
    skipped: list[str]
    hyps: list[dict]

    def result(self) -> dict:
        return {"wer": self.rates.wer, "cer": self.rates.cer, "params": self.params, "rtf": self.rtf,
                "utterances": self.utterances, "audio_s": round(self.audio_s, 2),
                "decode_s": round(self.decode_s, 2), "skipped": len(self.skipped),
                **{k: v for k, v in self.rates.as_dict().items() if k not in ("wer", "cer")}}


def evaluate(bundle: str | Path, data: str | Path, cfg: BeamConfig, device: str = "auto",
             batch_size: int | None = None, show_progress: bool = True, compute_type: str = "auto",
             language: str | None = None) -> Evaluation:
    """`bundle`: any teacher directory (common/teachers.py); `compute_type` and `language` are
    a Whisper teacher's."""
    transcriber = load_transcriber(bundle, device, compute_type, language)
    rows = list(iter_rows(data, ["utt_id", "audio", "text"]))
    waves, kept, skipped = [], [], []
    for row in rows:
        try:
            waves.append(transcriber.load(row["audio"]))
            kept.append(row)
        except AudioError as exc:
            skipped.append(f"{row['utt_id']}: {exc}")
    chunk = batch_size or 8 * 8
    results = []
    began = time.perf_counter()
    columns = [TextColumn("[bold]decode"), BarColumn(), MofNCompleteColumn(), TextColumn("utts"),
               TimeRemainingColumn()]
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task("decode", total=len(waves))
        for i in range(0, len(waves), chunk):
            results += transcriber.transcribe_waves(waves[i:i + chunk], cfg, batch_size)
            progress.advance(task, len(waves[i:i + chunk]))
    decode_s = time.perf_counter() - began
    refs = [transcriber.normalise(target_text(r["text"], True)) for r in kept]
    hyps = [target_text(t.text, True) for t in results]
    audio_s = sum(w.numel() for w in waves) / transcriber.sample_rate
    lines = [{"utt_id": r["utt_id"], "ref": ref, "hyp": hyp, "logp": t.nbest[0].logp}
             for r, ref, hyp, t in zip(kept, refs, hyps, results)]
    return Evaluation(rates=error_rates(refs, hyps), params=transcriber.params,
                      rtf=decode_s / max(audio_s, 1e-9), utterances=len(kept), audio_s=audio_s,
                      decode_s=decode_s, skipped=skipped, hyps=lines)


def write_evaluation(ev: Evaluation, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hyps.jsonl").write_text("".join(json.dumps(h) + "\n" for h in ev.hyps))
    (out / "result.json").write_text(json.dumps(ev.result(), indent=2))
