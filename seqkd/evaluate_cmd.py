"""`seqkd evaluate TEACHER --data D/test`: WER, CER, error counts, params and RTF (any kind of
teacher or student directory, `common.teachers`)."""

from __future__ import annotations

import argparse
import sys

from seqkd.transcribe_cmd import add_beam_arguments, add_teacher_arguments, beam_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="model bundle directory (or a run directory holding bundle/, an "
                                  "exported directory, or a Whisper CTranslate2 directory)")
    p.add_argument("--data", required=True, help="manifest directory to decode")
    add_beam_arguments(p)
    p.add_argument("--batch-size", type=int, default=None)
    add_teacher_arguments(p)
    p.add_argument("--out", help="write hyps.jsonl and result.json here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from common.bundle import BundleError, find_bundle
    from common.config import ConfigError
    from common.corpora.manifest import ManifestError, require_readable
    from scoring.evaluate import evaluate, write_evaluation

    bundle = find_bundle(args.bundle)
    try:
        require_readable(args.data)   # a score over part of a test set would pass for the whole
        ev = evaluate(bundle, args.data, beam_config(args), args.device, args.batch_size,
                      show_progress=sys.stderr.isatty(), compute_type=args.compute_type,
                      language=args.language)
    except (BundleError, ConfigError, ManifestError, ValueError) as exc:
        print(f"seqkd evaluate: {exc}", file=sys.stderr)
        return 2
    for line in ev.skipped:
        print(f"seqkd evaluate: skipped {line}", file=sys.stderr)
    r = ev.rates
    print(f"{bundle}: WER {100 * r.wer:.2f}% ({r.substitutions} sub, {r.deletions} del, "
          f"{r.insertions} ins / {r.words} words)  CER {100 * r.cer:.2f}%  "
          f"params {ev.params:,}  RTF {ev.rtf:.4f}  ({ev.utterances} utts, {ev.audio_s:.1f} s audio)")
    if args.out:
        write_evaluation(ev, args.out)
    return 0
