"""`seqkd label BUNDLE --data D/train --out L/train`: the teacher's N-best with Ray Data."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from seqkd.transcribe_cmd import add_beam_arguments, add_whisper_arguments, beam_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", nargs="?", help="teacher: a bundle (or run directory), an exported one, or "
                                             "a Whisper CTranslate2 directory; not with --via-serve")
    p.add_argument("--data", required=True, help="manifest directory to label")
    p.add_argument("--out", required=True, help="pseudo-label directory (one shard per input shard)")
    add_beam_arguments(p, beam=10, nbest=5)
    p.add_argument("--topm", type=int, default=None,
                   help="keep the teacher's top-M token distribution per position, for "
                        "`seqkd distill --word-kd` (0: keep none; default 8, and 0 for a Whisper "
                        "teacher, which gives none)")
    p.add_argument("--batch-size", type=int, default=16, help="utterances per map_batches call")
    p.add_argument("--concurrency", type=concurrency, default=1, metavar="N|MIN:MAX",
                   help="teacher actors (or Serve callers): N, or MIN:MAX for an autoscaling pool "
                        "that grows while work is queued (and the cluster autoscaler adds nodes)")
    p.add_argument("--num-gpus-per-worker", type=float, default=0.0)
    p.add_argument("--resources", type=resources, metavar="JSON",
                   help="custom resources per teacher actor, e.g. '{\"labeler\": 1}': only nodes "
                        "offering them run teachers, and the autoscaler adds such nodes on demand")
    p.add_argument("--via-serve", metavar="APP", nargs="?", const="teacher",
                   help="decode with the running Serve app APP (default name: teacher)")
    p.add_argument("--address", help="Ray cluster address (default: the job's cluster, or a local Ray)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--max-teacher-dev-wer", type=float, default=0.5, metavar="W",
                   help="warn when the teacher's dev WER (its bundle's meta) is above W")
    p.add_argument("--refuse-weak-teacher", action="store_true",
                   help="refuse to label with such a teacher instead of warning")
    p.add_argument("--fail-fast", action="store_true",
                   help="refuse at the first damaged input shard instead of labelling the others")
    add_whisper_arguments(p)
    p.set_defaults(run=run)


def concurrency(text: str) -> int | tuple[int, int]:
    """`N` (a fixed pool) or `MIN:MAX` (Ray Data's autoscaling actor pool)."""
    try:
        lo, _, hi = text.partition(":")
        return (int(lo), int(hi)) if hi else int(lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want N or MIN:MAX, not {text!r}") from None


def resources(text: str) -> dict[str, float]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) for v in value.values()):
        raise argparse.ArgumentTypeError('want a JSON object of numbers, e.g. \'{"labeler": 1}\'')
    return {str(k): float(v) for k, v in value.items()}


def run(args: argparse.Namespace) -> int:
    from common.bundle import BundleError, find_bundle
    from common.config import ConfigError
    from common.teachers import teacher_files
    from common.corpora.manifest import ManifestError
    from seqkd.ray_connect import connect
    from services.labeling import LabelError, label, weak_teacher

    bundle = find_bundle(args.bundle) if args.bundle else None
    if (bundle is None) == (args.via_serve is None):
        print("seqkd label: give a teacher BUNDLE or --via-serve, not both or neither", file=sys.stderr)
        return 2
    weak = bundle and weak_teacher(bundle, args.max_teacher_dev_wer)
    if weak:
        print(f"seqkd label: {'' if args.refuse_weak_teacher else 'WARNING: '}{weak}", file=sys.stderr)
        if args.refuse_weak_teacher:
            return 2
    try:
        topm = args.topm
        if topm is None:
            topm = 0 if bundle and teacher_files(bundle).foreign_vocabulary else 8
        cfg = replace(beam_config(args), topm=topm)
        connect(args.address)
        summary = label(bundle, args.data, args.out, cfg, args.batch_size, args.concurrency,
                        args.num_gpus_per_worker, args.via_serve, show_progress=sys.stderr.isatty(),
                        resources=args.resources, fail_fast=args.fail_fast,
                        compute_type=args.compute_type, language=args.language)
    except (ConfigError, ManifestError, LabelError, BundleError) as exc:
        print(f"seqkd label: {exc}", file=sys.stderr)
        return 2
    for path, reason in summary.damaged.items():
        print(f"seqkd label: not labelled: {path}: {reason}", file=sys.stderr)
    print(json.dumps(summary.__dict__) if args.json else summary.line())
    if summary.damaged:
        print(f"seqkd label: {len(summary.damaged)} damaged input shard(s) not labelled (named above, "
              f"and in {args.out}/labels.json under `skipped`); repair them and run the same command "
              f"again: it labels only those", file=sys.stderr)
        return 1
    return 0
