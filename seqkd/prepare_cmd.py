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
    s = sub.add_parser("synth", help="the built-in corpus: general English and read news spoken by "
                                     "espeak-ng, flite, festival and Piper")
    s.add_argument("--out", required=True, help="output directory (gets train/ dev/ test/)")
    s.add_argument("--train", type=int, default=2000)
    s.add_argument("--dev", type=int, default=200)
    s.add_argument("--test", type=int, default=200)
    s.add_argument("--test-unseen-engine", type=int, default=100, metavar="N",
                   help="N test utterances spoken by an engine no training utterance uses (Piper)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-words", type=int, default=None,
                   help="speak windows of 2..N words of each sentence (short utterances)")
    s.add_argument("--untranscribed", type=int, default=0, metavar="N",
                   help="N more utterances of the training speakers with an empty transcript "
                        "(OUT/untranscribed: audio for the teacher to label)")
    _add_writer_options(s)
    s.set_defaults(run=run_synth)

    lib = sub.add_parser("librispeech", help="LibriSpeech/<subset>/<spk>/<chapter>/ with .trans.txt")
    lib.add_argument("dir", help="the LibriSpeech directory (holding subsets such as dev-clean)")
    lib.add_argument("--out", required=True, help="output directory (one manifest per subset)")
    _add_writer_options(lib)
    lib.set_defaults(run=run_librispeech)

    w = sub.add_parser("wsj", help="WSJ0/WSJ1 LDC discs -> train_si84, train_si284, test_dev93, "
                                   "test_eval92 (Kaldi's wsj_data_prep.sh)")
    w.add_argument("--wsj0", required=True, help="folder holding the wsj0 discs (11-1.1, ...)")
    w.add_argument("--wsj1", required=True, help="folder holding the wsj1 discs (13-1.1, ...)")
    w.add_argument("--out", required=True)
    w.add_argument("--sets", nargs="+", choices=["train_si84", "train_si284", "test_dev93",
                                                 "test_eval92"], help="default: all four")
    w.add_argument("--allow-missing", action="store_true",
                   help="skip missing utterances/transcripts/discs with a warning and a count")
    _add_writer_options(w)
    w.set_defaults(run=run_wsj)

    kd = sub.add_parser("kaldi", help="a Kaldi data dir: wav.scp, text, utt2spk, [segments]")
    kd.add_argument("dir")
    kd.add_argument("--out", required=True, help="output directory (gets OUT/SPLIT)")
    kd.add_argument("--split", help="split name (default: the data dir's name)")
    kd.add_argument("--allow-pipes", action="store_true",
                    help="run wav.scp `cmd |` entries with bash (only for data dirs you trust)")
    _add_writer_options(kd)
    kd.set_defaults(run=run_kaldi)

    js = sub.add_parser("jsonl", help="NeMo-style JSONL: audio_filepath, text, [speaker, duration]")
    js.add_argument("file")
    js.add_argument("--out", required=True, help="output directory (gets OUT/SPLIT)")
    js.add_argument("--split", help="split name (default: the file's stem)")
    _add_writer_options(js)
    js.set_defaults(run=run_jsonl)

    a = sub.add_parser("asterisk", help="the Asterisk IVR prompts: 563 recordings of a person "
                                        "(16 kHz G.722, Debian packages), to test on")
    a.add_argument("--out", required=True, help="output directory (gets OUT/recorded)")
    a.add_argument("--no-install", action="store_true",
                   help="do not apt-get install the Debian packages when they are missing")
    _add_writer_options(a)
    a.set_defaults(run=run_asterisk)

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

    counts = {"train": args.train, "dev": args.dev, "test": args.test,
              "test_unseen_engine": args.test_unseen_engine, "untranscribed": args.untranscribed}
    try:
        jobs = plan({k: v for k, v in counts.items() if v > 0}, args.seed, max_words=args.max_words)
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
        _report(split, index, time.perf_counter() - began, args.stats)
    return 0


def _make_synth(job: tuple, seed: int):
    from common.corpora.synth import make_utterance

    split, index, text, voice = job
    return make_utterance(split, index, text, voice, seed)


def _add_writer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard-size", type=int, default=1000, help="utterances per shard")
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.add_argument("--stats", action="store_true", help="print each split's index.json")


def _report(split: str, index: dict, seconds: float, stats: bool) -> None:
    print(f"{split}: {index['utterances']} utts, {index['hours']:.3f} h, {index['speakers']} speakers, "
          f"{index['vocabulary']} words, {index['skipped_shards']} shards already done, {seconds:.1f} s")
    if stats:
        print(json.dumps({"split": split, **index}))


def run_librispeech(args: argparse.Namespace) -> int:
    from common.corpora import importers

    return _import("librispeech", lambda: _by_split(importers.librispeech(args.dir)), args)


def run_wsj(args: argparse.Namespace) -> int:
    from common.corpora.wsj import wsj_sets

    def list_sets():
        sets, warnings = wsj_sets(args.wsj0, args.wsj1, args.allow_missing, args.sets)
        for w in warnings[:20]:
            print(f"warning: {w}", file=sys.stderr)
        if warnings:
            print(f"warning: {len(warnings)} utterances skipped (--allow-missing)", file=sys.stderr)
        return sets

    return _import("wsj", list_sets, args)


def run_kaldi(args: argparse.Namespace) -> int:
    from common.corpora import importers

    return _import("kaldi", lambda: _by_split(importers.kaldi(args.dir, args.split, args.allow_pipes)),
                   args)


def run_jsonl(args: argparse.Namespace) -> int:
    from common.corpora import importers

    return _import("jsonl", lambda: _by_split(importers.jsonl(args.file, args.split)), args)


def _by_split(sources: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in sources:
        out.setdefault(s.split, []).append(s)
    return out


def _import(name: str, list_sets, args: argparse.Namespace) -> int:
    """List and check every split of the corpus first, then write one manifest per split."""
    from common.corpora.importers import check_sources, load_source
    from common.corpora.manifest import ManifestError
    from common.corpora.writer import write_manifest

    try:
        sets = list_sets()
        for jobs in sets.values():
            check_sources(jobs)
        for split, jobs in sets.items():
            began = time.perf_counter()
            index = write_manifest(Path(args.out) / split, jobs, load_source, args.shard_size,
                                   args.workers, label=split)
            _report(split, index, time.perf_counter() - began, args.stats)
    except ManifestError as exc:
        print(f"seqkd prepare {name}: {exc}", file=sys.stderr)
        return 2
    return 0


def run_asterisk(args: argparse.Namespace) -> int:
    from common.corpora import asterisk

    if not args.no_install and not (asterisk.TRANSCRIPTS.is_file() and asterisk.SOUNDS.is_dir()):
        _apt_install(asterisk.PACKAGES.split())

    def list_sets():
        sources, dropped = asterisk.prompts()
        print(f"asterisk: {len(sources)} prompts with speech; dropped {dropped['sound_descriptions']} "
              f"sound descriptions, {dropped['no_audio']} transcripts without audio")
        return {asterisk.SPLIT: sources}

    return _import("asterisk", list_sets, args)


def _apt_install(packages: list[str]) -> None:
    """Install Debian packages (as root, where apt-get exists); say so in one line if not."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"seqkd prepare: install the Debian packages {' '.join(packages)} (needs root)",
              file=sys.stderr)
        return
    print(f"installing {' '.join(packages)} (apt-get)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, capture_output=True)


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
