"""The paper's Table 2 on the built-in corpus: GT and KD students of two sizes, k x beam, word-level
KD, the paper's expanded protocol and untranscribed audio, at several seeds; resumable.

    python bench/paper_table.py --data demo_out/data --teacher demo_out/runs/teacher \\
        --work study --out docs/study --seeds 0 1 --sizes small mid

Every run lives in WORK/runs/<size>-<config>-s<seed> (a finished run is reused, a started one
resumed); labels in WORK/labels; evaluations are cached. After each run the table is rewritten
(OUT/study.md, OUT/study.json), so an interrupted study still leaves what it measured. Settings
are compared on dev; test is only reported. Seeds change the students' initial weights and
batch order; the corpus and the teacher (and so the labels) are the same for every seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.beam_search import BeamConfig  # noqa: E402
from common.bundle import find_bundle  # noqa: E402
from common.metrics import bootstrap_wer  # noqa: E402
from common.tokenizer import Tokenizer  # noqa: E402
from trainer.data import PseudoLabels  # noqa: E402
from trainer.distill import SequenceKD  # noqa: E402

CONF = Path(__file__).resolve().parent.parent / "conf"
SIZES = {"small": "student_small", "mid": "student_large"}
DECODE = BeamConfig(beam=5, nbest=1, ctc_weight=0.3)          # how every model is scored
LABELS = {"b5": BeamConfig(beam=5, nbest=5, ctc_weight=0.3, topm=8),
          "b10": BeamConfig(beam=10, nbest=10, ctc_weight=0.3, topm=8)}
PAPER = {  # Table 2 of Mun'im et al. 2019, WSJ eval92 WER %: (mid 2.7x, small 9.8x)
    "gt": (21.8, 28.7), "kd-k1-b5": (20.5, 26.1), "kd-k1-b10": (20.5, 25.3), "kd-k5-b5": (20.1, 22.3),
    "kd-k5-b10": (21.2, 23.3), "kd-k10-b10": (19.7, 24.7)}


@dataclass(frozen=True)
class Config:
    name: str
    labels: str | None = None                  # None: ground truth
    k: int = 1
    kd: SequenceKD = field(default_factory=SequenceKD)
    untranscribed: bool = False                # labels of the untranscribed pool as well
    epochs_divisor: int = 1                    # --expand at the GT run's number of steps


CONFIGS = {c.name: c for c in [
    Config("gt"),
    Config("kd-k1-b5", "b5", 1),
    Config("kd-k5-b5", "b5", 5),
    Config("kd-k10-b10", "b10", 10),
    Config("kd-k1-b10", "b10", 1),
    Config("kd-k5-b10", "b10", 5),
    Config("kd-k1-b5-word", "b5", 1, SequenceKD(word_kd=0.5, kd_temperature=1.0)),
    Config("kd-k5-b5-word", "b5", 5, SequenceKD(word_kd=0.5, kd_temperature=1.0)),
    Config("kd-k1-b5-word-T2", "b5", 1, SequenceKD(word_kd=0.5, kd_temperature=2.0)),
    Config("kd-k1-b5-frame", "b5", 1, SequenceKD(frame_kd=0.5)),
    Config("kd-k1-b5-word-frame", "b5", 1, SequenceKD(word_kd=0.5, frame_kd=0.5)),
    Config("kd-k5-b5-word-frame", "b5", 5, SequenceKD(word_kd=0.5, frame_kd=0.5)),
    Config("kd-k5-b5-expand", "b5", 5, SequenceKD(expand=True), epochs_divisor=5),
    Config("kd-k1-b5-word-untr", "b5", 1, SequenceKD(word_kd=0.5), untranscribed=True),
]}


class Study:
    def __init__(self, args: argparse.Namespace) -> None:
        self.data, self.work, self.out = Path(args.data), Path(args.work), Path(args.out)
        self.teacher = find_bundle(args.teacher)
        self.args = args

    def labels(self, name: str, split: str = "train") -> Path:
        from services.labeling import label

        out = self.work / "labels" / f"{name}-{split}"
        summary = label(self.teacher, self.data / split, out, LABELS[name], concurrency=1,
                        show_progress=False)
        if summary.shards_done:
            print(f"labels {name} {split}: {summary.line()}", flush=True)
        return out

    def run(self, size: str, config: Config, seed: int) -> Path:
        from trainer.distill import distill
        from trainer.recipe import load_recipe
        from trainer.run import train

        run_dir = self.work / "runs" / f"{size}-{config.name}-s{seed}"
        if (run_dir / "bundle").is_dir():
            return run_dir
        recipe = load_recipe(CONF / f"{SIZES[size]}.yaml", {"optim": {"seed": seed}})
        recipe.optim.epochs = max(1, recipe.optim.epochs // config.epochs_divisor)
        resume, began = (run_dir / "ray").exists(), time.perf_counter()
        if config.labels is None:
            tokenizer = Tokenizer.load(self.teacher / "tokenizer.model")
            train(recipe, self.data / "train", self.data / "dev", run_dir, resume=resume, tokenizer=tokenizer)
        else:
            dirs = [self.labels(config.labels)]
            if config.untranscribed:
                dirs.append(self.labels(config.labels, "untranscribed"))
            distill(recipe, dirs, self.data / "dev", run_dir, PseudoLabels(k=config.k), config.kd,
                    resume=resume)
        print(f"{run_dir.name}: trained in {time.perf_counter() - began:.0f} s", flush=True)
        return run_dir

    def score(self, run_dir: Path, split: str) -> dict[str, tuple[int, int]]:
        from scoring.report import evaluation

        return evaluation(run_dir / "bundle", self.data / split, DECODE, self.work / "evals")[1]

    def table(self) -> dict:
        """Mean and sd over seeds of dev and test WER; the paired bootstrap against the GT run of
        the same size and seed, on test, pooled over seeds by summing the per-seed differences.
        Every size with finished runs in WORK is in it, not only --sizes: a study run one size at a
        time keeps one table."""
        rows = []
        for size in SIZES:
            for name, config in CONFIGS.items():
                runs = {s: self.work / "runs" / f"{size}-{name}-s{s}" for s in self.args.seeds}
                runs = {s: r for s, r in runs.items() if (r / "bundle").is_dir()}
                if not runs:
                    continue
                row = {"size": size, "recipe": SIZES[size], "config": name, "seeds": sorted(runs),
                       "paper_wer": PAPER.get(name, (None, None))[0 if size == "mid" else 1]}
                for split in ("dev", "test"):
                    wers = [_wer(self.score(r, split)) for r in runs.values()]
                    row[f"{split}_wer"] = statistics.mean(wers)
                    row[f"{split}_wer_sd"] = statistics.stdev(wers) if len(wers) > 1 else 0.0
                    row[f"{split}_wer_runs"] = wers
                    if name != "gt":
                        row.update(self._vs_gt(size, runs, split))
                meta = [json.loads((r / "bundle" / "meta.json").read_text()) for r in runs.values()]
                row["steps"] = statistics.mean(m["steps"] for m in meta)
                row["train_s"] = statistics.mean(m["train_seconds"] for m in meta)
                rows.append(row)
        return {"decode": DECODE.__dict__, "labels": {k: v.__dict__ for k, v in LABELS.items()},
                "teacher": str(self.teacher), "teacher_wer": {s: _wer(self.score(self.teacher.parent, s))
                                                              for s in ("dev", "test")}, "rows": rows}

    def _vs_gt(self, size: str, runs: dict[int, Path], split: str) -> dict:
        mine, theirs, words = [], [], []
        for seed, run in runs.items():
            gt = self.work / "runs" / f"{size}-gt-s{seed}"
            if not (gt / "bundle").is_dir():
                return {}
            a, b = self.score(run, split), self.score(gt, split)
            ids = sorted(a.keys() & b.keys())
            mine += [a[u][0] for u in ids]
            theirs += [b[u][0] for u in ids]
            words += [a[u][1] for u in ids]
        diff = bootstrap_wer(mine, words, theirs)
        return {f"{split}_diff_vs_gt": diff.value, f"{split}_ci95": diff.ci95, f"{split}_p": diff.p_value}

    def write(self) -> None:
        table = self.table()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "study.json").write_text(json.dumps(table, indent=2))
        (self.out / "study.md").write_text(markdown(table))
        print(markdown(table), flush=True)


def _wer(per_utt: dict[str, tuple[int, int]]) -> float:
    return sum(e for e, _ in per_utt.values()) / sum(n for _, n in per_utt.values())


def markdown(table: dict) -> str:
    t = table["teacher_wer"]
    lines = [f"Teacher: dev WER {100 * t['dev']:.2f}%, test WER {100 * t['test']:.2f}%. WER % as mean +- sd "
             f"over seeds; 'vs GT' is the KD WER minus the GT WER of the same size and seed, with the "
             f"paired bootstrap 95% CI over utterances (seeds pooled). Paper: WSJ eval92.", "",
             "| size | targets | seeds | steps | train s | dev WER | dev vs GT [95% CI] | test WER | "
             "test vs GT [95% CI] | p (test) | paper WER |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in table["rows"]:
        def diff(split: str) -> str:
            if f"{split}_diff_vs_gt" not in r:
                return ""
            lo, hi = r[f"{split}_ci95"]
            return f"{100 * r[f'{split}_diff_vs_gt']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
        p = r.get("test_p")
        lines.append(
            f"| {r['size']} ({r['recipe']}) | {r['config']} | {len(r['seeds'])} | {r['steps']:.0f} | "
            f"{r['train_s']:.0f} | {100 * r['dev_wer']:.2f} +- {100 * r['dev_wer_sd']:.2f} | {diff('dev')} | "
            f"{100 * r['test_wer']:.2f} +- {100 * r['test_wer_sd']:.2f} | {diff('test')} | "
            f"{'' if p is None else f'{p:.3f}'} | {'' if r['paper_wer'] is None else r['paper_wer']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="corpus with train/ dev/ test/ (and untranscribed/)")
    p.add_argument("--teacher", required=True, help="teacher run or bundle")
    p.add_argument("--work", required=True, help="runs, labels and evaluations (resumable)")
    p.add_argument("--out", required=True, help="where study.md and study.json go")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["small", "mid"])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                   help="in this order, each for every size and seed")
    p.add_argument("--table-only", action="store_true", help="rewrite the table from finished runs")
    args = p.parse_args()

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    study = Study(args)
    try:
        if not args.table_only:
            for name in args.configs:
                for size in args.sizes:
                    for seed in args.seeds:
                        config = CONFIGS[name]
                        if config.untranscribed and not (study.data / "untranscribed").is_dir():
                            print(f"skipping {name}: no {study.data / 'untranscribed'}", flush=True)
                            continue
                        study.run(size, config, seed)
                        study.write()
        study.write()
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
