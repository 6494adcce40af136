"""`seqkd` command line: parses arguments and hands off; the work lives in the packages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from seqkd import evaluate_cmd, label_cmd, prepare_cmd, serve_cmd, train_cmd, transcribe_cmd

PENDING = {
    "distill": ("train a student by sequence-level knowledge distillation", 8),
    "report": ("the paper-style table and plot for a set of bundles", 8),
    "demo": ("the whole pipeline end to end on the built-in corpus", 8),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqkd", description="Sequence-level knowledge distillation for attention-based ASR.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None] | None]] = {
        "prepare": ("write manifest shards (synthetic corpus, WSJ, Kaldi, LibriSpeech, JSONL) "
                    "and train tokenizers", prepare_cmd.add_arguments),
        "transcribe": ("decode audio files with a model bundle", transcribe_cmd.add_arguments),
        "train": ("train a teacher or baseline on ground truth with Ray Train",
                  train_cmd.add_arguments),
        "evaluate": ("decode a manifest and score WER/CER, params and RTF",
                     evaluate_cmd.add_arguments),
        "serve": ("serve a bundle over HTTP with Ray Serve + FastAPI", serve_cmd.add_arguments),
        "label": ("label a corpus with the teacher's N-best using Ray Data", label_cmd.add_arguments),
    }
    for name in ["prepare", "train", "transcribe", "evaluate", "serve", "label", "distill",
                 "report", "demo"]:
        if name in commands:
            help_text, add_args = commands[name]
        else:
            help_text, add_args = f"{PENDING[name][0]} (not implemented yet)", None
        p = sub.add_parser(name, help=help_text, description=help_text)
        if add_args:
            add_args(p)
        else:
            p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in PENDING:
        print(f"seqkd {args.command}: not implemented yet (issue #{PENDING[args.command][1]})",
              file=sys.stderr)
        return 2
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
