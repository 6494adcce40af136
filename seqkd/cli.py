"""`seqkd` command line: parses arguments and hands off; the work lives in the packages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from seqkd import (demo_cmd, distill_cmd, evaluate_cmd, export_cmd, label_cmd, prepare_cmd, report_cmd,
                   serve_cmd, train_cmd, transcribe_cmd)
from seqkd import console


def _in_out(args: argparse.Namespace) -> Path:
    """OUT/ray.log (RUN/ray.log): the commands whose output directory keeps Ray's log."""
    return Path(args.out) / "ray.log"


# The commands that start Ray, and where its output goes unless --verbose (seqkd.console).
RAY_LOGS: dict[str, tuple[str, Callable[[argparse.Namespace], Path]]] = {
    "train": ("RUN/ray.log", _in_out),
    "distill": ("RUN/ray.log", _in_out),
    "label": ("OUT/ray.log", _in_out),
    "serve": ("a new seqkd-serve-*.log in the temp directory", lambda _: console.default_serve_log()),
    "demo": ("OUT/ray.log", _in_out),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqkd", description="Sequence-level knowledge distillation for attention-based ASR.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
        "prepare": ("write manifest shards (synthetic corpus, WSJ, Kaldi, LibriSpeech, JSONL) "
                    "and train tokenizers", prepare_cmd.add_arguments),
        "train": ("train a teacher or baseline on ground truth with Ray Train",
                  train_cmd.add_arguments),
        "transcribe": ("decode audio files with a model bundle", transcribe_cmd.add_arguments),
        "evaluate": ("decode a manifest and score WER/CER, params and RTF",
                     evaluate_cmd.add_arguments),
        "serve": ("serve a bundle over HTTP with Ray Serve + FastAPI", serve_cmd.add_arguments),
        "label": ("label a corpus with the teacher's N-best using Ray Data", label_cmd.add_arguments),
        "distill": ("train a student on the teacher's N-best (sequence-level KD) with Ray Train",
                    distill_cmd.add_arguments),
        "report": ("the paper-style table and plot (WER vs size) for a teacher and its students",
                   report_cmd.add_arguments),
        "export": ("a bundle as ONNX graphs (fp32 or int8) for ONNX Runtime; every command takes the "
                   "exported directory", export_cmd.add_arguments),
        "demo": ("the whole pipeline end to end on the built-in corpus", demo_cmd.add_arguments),
    }
    for name, (help_text, add_args) in commands.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_args(command)
        if name in RAY_LOGS:
            console.add_arguments(command, RAY_LOGS[name][0])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in RAY_LOGS:
        return int(args.run(args) or 0)
    log_file = RAY_LOGS[args.command][1]
    return console.run(f"seqkd {args.command}", lambda: int(args.run(args) or 0),
                       lambda: args.log_file or log_file(args), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
