"""`seqkd demo [--quick] [--out DIR]`: the whole pipeline on the built-in corpus (see seqkd.demo)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="everything the demo makes goes here (re-run to resume)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and a few steps (a smoke test, CI)")
    p.add_argument("--seed", type=int, help="corpus seed")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from seqkd.demo import Demo, settings

    Demo(args.out, settings(args.quick, seed=args.seed)).run()
    return 0
