"""`seqkd transcribe TEACHER FILE...`: one line of text per file, or JSON with --json.

TEACHER is any directory `common.teachers` reads: a seqkd bundle, an exported one, or a Whisper
CTranslate2 directory (its text normalised to the corpus's form; --json adds Whisper's own)."""

from __future__ import annotations

import argparse
import json
import sys

from common.audio import AudioError
from common.beam_search import BeamConfig
from common.bundle import BundleError
from common.config import ConfigError, from_dict
from common.whisper import COMPUTE_TYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="model bundle directory, an exported one (seqkd export), or a "
                                  "Whisper CTranslate2 directory")
    p.add_argument("files", nargs="+", help="audio files (WAV, FLAC, MP3, OGG, SPHERE .wv1, ...)")
    add_beam_arguments(p)
    p.add_argument("--batch-size", type=int, default=None,
                   help="utterances per decoding batch (default: 8 on CPU, 64 on GPU)")
    add_teacher_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON object per file: N-best, scores, RTF")
    p.set_defaults(run=run)


def add_beam_arguments(p: argparse.ArgumentParser, beam: int = 10, nbest: int = 1) -> None:
    p.add_argument("--beam", type=int, default=beam)
    p.add_argument("--nbest", type=int, default=nbest)
    p.add_argument("--ctc-weight", type=float, default=0.0)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--max-len-ratio", type=float, default=1.0)
    p.add_argument("--ctc-window", type=int, default=0, metavar="FRAMES",
                   help="with --ctc-weight: score a hypothesis's next token only within FRAMES encoder "
                        "frames of its last one (faster on long utterances, approximate; 0: every frame)")


def add_teacher_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1")
    add_whisper_arguments(p)


def add_whisper_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compute-type", default="auto", choices=COMPUTE_TYPES,
                   help="a Whisper teacher's CTranslate2 compute type (auto: int8 on CPU, float16 on GPU)")
    p.add_argument("--language", help="a multilingual Whisper's language token (default: en)")


def beam_config(args: argparse.Namespace) -> BeamConfig:
    return from_dict(BeamConfig, {"beam": args.beam, "nbest": args.nbest,
                                  "ctc_weight": args.ctc_weight,
                                  "length_penalty": args.length_penalty,
                                  "max_len_ratio": args.max_len_ratio,
                                  "ctc_window": args.ctc_window}, "decode")


def run(args: argparse.Namespace) -> int:
    from common.teachers import load_transcriber  # torch import only when needed

    try:
        cfg = beam_config(args)
        transcriber = load_transcriber(args.bundle, args.device, args.compute_type, args.language)
    except (ConfigError, BundleError, ValueError) as exc:
        print(f"seqkd transcribe: {exc}", file=sys.stderr)
        return 2
    status = 0
    good: list[tuple[str, object]] = []
    for path in args.files:
        try:
            good.append((path, transcriber.load(path)))
        except AudioError as exc:
            print(f"seqkd transcribe: {path}: {exc}", file=sys.stderr)
            status = 1
    try:
        results = transcriber.transcribe_waves([w for _, w in good], cfg, args.batch_size)
    except ValueError as exc:      # settings this kind of teacher cannot decode with
        print(f"seqkd transcribe: {exc}", file=sys.stderr)
        return 2
    for (path, _), result in zip(good, results):
        if args.json:
            print(json.dumps({"file": path, **result.as_dict()}))
        else:
            print(result.text)
    return status
