"""`seqkd train --config conf/X.yaml --train D/train --dev D/dev --out RUN`: Ray Train on ground truth."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML recipe (conf/teacher.yaml, ...)")
    p.add_argument("--train", required=True, help="training manifest directory")
    p.add_argument("--dev", help="dev manifest directory: WER per epoch, best bundle by dev WER")
    p.add_argument("--out", required=True, help="run directory (bundle in RUN/bundle)")
    add_run_arguments(p)
    p.set_defaults(run=run)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with `seqkd distill`: overrides of the recipe and the Ray connection."""
    p.add_argument("--epochs", type=int, help="override optim.epochs")
    p.add_argument("--max-steps", type=int, help="override optim.max_steps (smoke runs)")
    p.add_argument("--num-workers", type=int, help="override scaling.num_workers (Ray Train workers)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")


def overrides(args: argparse.Namespace) -> dict:
    return {"optim": {"epochs": args.epochs, "max_steps": args.max_steps},
            "scaling": {"num_workers": args.num_workers}}


def run(args: argparse.Namespace) -> int:
    from common.config import ConfigError
    from common.corpora.manifest import ManifestError, require_readable
    from trainer.recipe import load_recipe
    from seqkd.ray_connect import connect
    from trainer.run import RunError, require_cpus, train

    try:
        recipe = load_recipe(args.config, overrides(args))
        for data in filter(None, (args.train, args.dev)):   # refuse now, not hours in
            require_readable(data)
        if connect(args.address, args.num_cpus):
            require_cpus(recipe)
        summary = train(recipe, args.train, args.dev, args.out, resume=args.resume)
    except (ConfigError, ManifestError, RunError) as exc:
        print(f"seqkd train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
