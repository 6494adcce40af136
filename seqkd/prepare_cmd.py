"""`seqkd prepare synth|tokenizer ...`: build manifest shards and tokenizers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    s = sub.add_parser("synth", help="the built-in read-news corpus spoken by espeak-ng")
    s.add_argument("--out", required=True, help="output directory (gets train/ dev/ test/)")
    s.add_argument("--train", type=int, default=2000)
    s.add_argument("--dev", type=int, default=200)
    s.add_argument("--test", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shard-size", type=int, default=1000)
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(run=run_synth)

    t = sub.add_parser("tokenizer", help="train a sentencepiece tokenizer on a manifest's text")
    t.add_argument("--manifest", required=True, help="manifest directory (e.g. D/train)")
    t.add_argument("--vocab-size", type=int, default=256)
    t.add_argument("--model-type", choices=["unigram", "bpe", "char"], default="unigram")
    t.add_argument("--out", help="where to write the .model (default: MANIFEST/tokenizer.model)")
    t.set_defaults(run=run_tokenizer)

    st = sub.add_parser("stats", help="print index.json counts of manifest directories")
    st.add_argument("dirs", nargs="+")
    st.set_defaults(run=run_stats)


def run_synth(args: argparse.Namespace) -> int:
    from common.corpora.synth import SynthError, plan
    from common.corpora.writer import write_manifest

    counts = {"train": args.train, "dev": args.dev, "test": args.test}
    try:
        jobs = plan({k: v for k, v in counts.items() if v > 0}, args.seed)
    except SynthError as exc:
        print(f"seqkd prepare synth: {exc}", file=sys.stderr)
        return 2
    make = partial(_make_synth, seed=args.seed)
    for split in [s for s in counts if counts[s] > 0]:
        began = time.perf_counter()
        split_jobs = [j for j in jobs if j[0] == split]
        try:
            index = write_manifest(Path(args.out) / split, split_jobs, make, args.shard_size,
                                   args.workers, label=split)
        except SynthError as exc:
            print(f"seqkd prepare synth: {exc}", file=sys.stderr)
            return 2
        took = time.perf_counter() - began
        print(f"{split}: {index['utterances']} utts, {index['hours'] * 60:.1f} min audio, "
              f"{index['speakers']} speakers, {index['vocabulary']} words, "
              f"{index['skipped_shards']} shards already done, {took:.1f} s")
    return 0


def _make_synth(job: tuple, seed: int):
    from common.corpora.synth import make_utterance

    split, index, text, voice = job
    return make_utterance(split, index, text, voice, seed)


def run_tokenizer(args: argparse.Namespace) -> int:
    from common.corpora.manifest import ManifestError, iter_rows
    from common.tokenizer import Tokenizer, TokenizerError

    try:
        texts = [r["text"] for r in iter_rows(args.manifest, ["text"])]
        tok = Tokenizer.train(texts, args.vocab_size, args.model_type)
    except (ManifestError, TokenizerError) as exc:
        print(f"seqkd prepare tokenizer: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or Path(args.manifest) / "tokenizer.model")
    tok.save(out)
    print(f"tokenizer: {tok.vocab_size} pieces ({args.model_type}) from {len(texts)} transcripts -> {out}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from common.corpora.manifest import ManifestError, write_index

    for d in args.dirs:
        try:
            print(json.dumps({"dir": d, **write_index(d)}))
        except ManifestError as exc:
            print(f"seqkd prepare stats: {exc}", file=sys.stderr)
            return 2
    return 0
