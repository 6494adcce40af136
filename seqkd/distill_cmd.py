"""`seqkd distill --config conf/student_X.yaml --labels L/train --dev D/dev --out RUN`:
sequence-level KD of a student on the teacher's N-best, with Ray Train."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from seqkd.train_cmd import add_run_arguments, overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="student YAML recipe (conf/student_small.yaml, ...)")
    p.add_argument("--labels", required=True, nargs="+",
                   help="pseudo-label directories written by `seqkd label` (one teacher), e.g. "
                        "L/train L/untranscribed")
    p.add_argument("--dev", help="dev manifest directory (scored against its transcripts)")
    p.add_argument("--out", required=True, help="run directory (bundle in RUN/bundle)")
    add_kd_arguments(p)
    add_run_arguments(p)
    p.set_defaults(run=run)


def add_kd_arguments(p: argparse.ArgumentParser) -> None:
    """The label selection (k, max_wer) and the KD settings, each over the recipe's `kd:` section
    (`common.kd.KDConfig`; a flag left out takes the recipe's value, else the default named)."""
    p.add_argument("--k", type=int, default=5, help="top-k teacher hypotheses per utterance")
    p.add_argument("--weights", choices=["uniform", "score"],
                   help="weight per hypothesis: uniform (default), or softmax(teacher logp / temperature)")
    p.add_argument("--temperature", type=float, help="temperature of --weights score (default 1)")
    p.add_argument("--gt-weight", type=float,
                   help="share of the loss on the transcript, where there is one (default 0 = pure KD)")
    p.add_argument("--max-wer", type=float, default=None,
                   help="drop hypotheses whose WER against the transcript exceeds this (e.g. 0.5)")
    p.add_argument("--ctc-target", choices=["1best", "transcript"],
                   help="what the CTC branch learns (default 1best)")
    p.add_argument("--word-kd", type=float, metavar="W",
                   help="decoder loss = (1 - W) x cross-entropy + W x KL to the teacher's top-M "
                        "distributions along each hypothesis (labels made with `seqkd label --topm M`; "
                        "default 0 = sequence-level only)")
    p.add_argument("--frame-kd", type=float, metavar="W",
                   help="CTC loss = (1 - W) x CTC + W x KL to the teacher's CTC distribution per encoder "
                        "frame (a student with the teacher's frame rate; labels made with --topm; default 0)")
    p.add_argument("--kd-temperature", type=float, metavar="T",
                   help="temperature of the word- and frame-level KL (the loss is scaled by T^2; default 1)")
    p.add_argument("--expand", action=argparse.BooleanOptionalAction,
                   help="each hypothesis its own training example (the paper's protocol; an epoch "
                        "is k x utterances) instead of k targets beside one encoder pass (default no)")


def settings(args: argparse.Namespace):
    """The recipe with the flags over it (the KD flags over its `kd:` section, validated like the
    file), the labels' selection, and the KD settings."""
    from common.kd import KDConfig
    from trainer.data import PseudoLabels
    from trainer.recipe import load_recipe

    # a flag left out, or a setting that has none, is the recipe's
    kd_flags = {f.name: getattr(args, f.name, None) for f in fields(KDConfig)}
    recipe = load_recipe(args.config, {**overrides(args), "kd": kd_flags})
    return recipe, PseudoLabels(k=args.k, max_wer=args.max_wer), recipe.kd or KDConfig()


def run(args: argparse.Namespace) -> int:
    from common.config import ConfigError
    from common.corpora.manifest import ManifestError
    from seqkd.ray_connect import connect
    from trainer.distill import distill, open_all
    from trainer.run import RunError, require_cpus

    try:
        recipe, pseudo, kd = settings(args)
        check_data(args.labels, args.dev)   # refuse damaged shards now, not hours in
        open_all(args.labels)   # refuse what is not pseudo labels before starting Ray
        if connect(args.address, args.num_cpus):
            require_cpus(recipe)
        summary = distill(recipe, args.labels, args.dev, args.out, pseudo, kd, args.resume)
    except (ConfigError, ManifestError, RunError, ValueError) as exc:
        print(f"seqkd distill: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def check_data(labels: list[str], dev: str | None) -> None:
    """Every shard readable, before Ray starts. Label shards are checked against the label schema
    where labels.json says they are labels (elsewhere open_all refuses them in its own words), and
    input shards that `seqkd label` skipped as damaged are named: the student learns without them."""
    from common.corpora.manifest import SCHEMA, require_readable
    from common.labels import INDEX, LABEL_SCHEMA

    for directory in map(Path, labels):
        index = directory / INDEX
        require_readable(directory, LABEL_SCHEMA if index.exists() else SCHEMA, INDEX)
        skipped = json.loads(index.read_text()).get("skipped", {}) if index.exists() else {}
        for name, reason in skipped.items():
            print(f"seqkd distill: WARNING: {directory}: input shard {name} was not labelled ({reason}); "
                  f"repair it and re-run `seqkd label` to train on it too", file=sys.stderr)
    if dev:
        require_readable(dev)
