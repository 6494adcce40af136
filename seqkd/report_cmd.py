"""`seqkd report RUN_OR_BUNDLE... --test D/test [--out DIR]`: the paper-style table and plot."""

from __future__ import annotations

import argparse
import sys

from seqkd.transcribe_cmd import add_beam_arguments, beam_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundles", nargs="+", help="model bundles, run directories or exported directories "
                                              "(teacher and students)")
    p.add_argument("--test", required=True, help="manifest directory every model is scored on")
    p.add_argument("--recorded", help="a manifest of recordings of people (`seqkd prepare asterisk`): "
                                      "a second pair of WER/CER columns")
    p.add_argument("--teacher", help="the teacher's bundle (default: the one the KD students name, "
                                     "else the largest)")
    p.add_argument("--out", default="report", help="writes report.md, report.json, report.png here")
    p.add_argument("--title", default="seqkd: teacher vs students", help="table and plot title")
    add_beam_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from common.config import ConfigError
    from common.corpora.manifest import ManifestError
    from scoring.report import ReportError, build_report, rich_table, write_report
    from seqkd.console import wide_console

    console = wide_console(stderr=True)
    try:
        rows = build_report(args.bundles, args.test, beam_config(args), args.out, args.teacher, console,
                            recorded=args.recorded)
    except (ConfigError, ManifestError, ReportError, ValueError) as exc:
        print(f"seqkd report: {exc}", file=sys.stderr)
        return 2
    write_report(rows, args.out, args.title)
    wide_console().print(rich_table(rows, args.title))
    print(f"wrote {args.out}/report.md, report.json, report.png")
    return 0
