"""Whisper tiny.en as the teacher: students of two sizes distilled from its labels of the built-in
corpus's training audio (no transcript used), beside their GT twins and Whisper itself; resumable.

    python bench/whisper_study.py --data D --whisper WHISPER_DIR --work W --out docs/study/whisper
        [--sizes small mid] [--seed 0] [--side-by-side 2]

D holds `seqkd prepare synth` splits (train, dev, test, test_unseen_engine) and `seqkd prepare
asterisk`'s recorded/. Stages, each skipped when its output exists (a started run is resumed):
  labels   `seqkd label WHISPER --data D/train` (beam 5, 5-best, int8, one actor)
  runs     per size: GT (the recipe on the transcripts, its own tokenizer), KD k=1 and KD k=5
           (`seqkd distill` on Whisper's labels: the student's tokenizer is learnt from the
           hypotheses' text, so no transcript is read); `--side-by-side 2` trains two at once,
           each on one core (`scaling: {cpu_threads: 1, cpus_per_worker: 0.5}`)
  scores   every model on test, test_unseen_engine and recorded (scoring.report's cached
           evaluations, CPU, the demo's beam: 5, CTC weight 0.3 for students, none for Whisper):
           WER, CER, parameters, RTF (of the test_unseen_engine decode: delete its cached
           evaluations and run `--table-only` on a quiet machine to time it alone); KD minus GT
           with the paired bootstrap's 95% CI on test
OUT/whisper_study.{md,json} are written at the end (`--table-only` rewrites them from the runs
finished so far, while others train). The students' settings are the
recipes' (chosen on dev for the demo); nothing is tuned here, and test is only reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.beam_search import BeamConfig  # noqa: E402
from common.metrics import bootstrap_wer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"small": "student_small", "mid": "student_large"}
CONFIGS = {"gt": None, "kd-k1": 1, "kd-k5": 5}      # name -> k (None: ground truth)
SPLITS = ("test", "test_unseen_engine", "recorded")
RTF_SPLIT = "test_unseen_engine"   # 100 utterances: re-decoded on a quiet machine for the RTF column
DECODE = BeamConfig(beam=5, nbest=1, ctc_weight=0.3)  # Whisper is scored without the CTC weight
SIDE_BY_SIDE = {"scaling": {"cpu_threads": 1, "cpus_per_worker": 0.5}}


def seqkd(*args: str, log: Path) -> None:
    """One CLI stage as a subprocess (its own local Ray), its output in `log`; fails loudly."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        code = subprocess.call([sys.executable, "-m", "seqkd", *args], stdout=out, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"seqkd {args[0]} failed ({code}); see {log}")


class Study:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data, self.work, self.out = Path(args.data), Path(args.work), Path(args.out)
        self.whisper = Path(args.whisper)
        self.labels = self.work / "labels" / "train"

    def label(self) -> None:
        if (self.labels / "labels.json").exists() and not any(
                not (self.labels / p.name).exists() for p in (self.data / "train").glob("*.parquet")):
            return
        began = time.perf_counter()
        seqkd("label", str(self.whisper), "--data", str(self.data / "train"), "--out", str(self.labels),
              "--beam", "5", "--nbest", "5", "--batch-size", "16", "--compute-type", "int8",
              log=self.work / "logs" / "label.log")
        print(f"labels: {time.perf_counter() - began:.0f} s", flush=True)

    def recipe(self, size: str) -> Path:
        """The size's recipe at the study's seed, on one core when runs go side by side."""
        data = yaml.safe_load((ROOT / "conf" / f"{SIZES[size]}.yaml").read_text())
        data["optim"]["seed"] = self.args.seed
        if self.args.side_by_side > 1:
            data["scaling"] = {**(data.get("scaling") or {}), **SIDE_BY_SIDE["scaling"]}
        path = self.work / "recipes" / f"{size}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def run_dir(self, size: str, config: str) -> Path:
        return self.work / "runs" / f"{size}-{config}-s{self.args.seed}"

    def train(self, size: str, config: str) -> None:
        run = self.run_dir(size, config)
        if (run / "bundle").is_dir():
            return
        k, began = CONFIGS[config], time.perf_counter()
        common = ["--config", str(self.recipe(size)), "--dev", str(self.data / "dev"), "--out", str(run),
                  "--num-cpus", "2", *(["--resume"] if (run / "ray").exists() else [])]
        if k is None:
            seqkd("train", "--train", str(self.data / "train"), *common, log=self.work / "logs" / f"{run.name}.log")
        else:
            seqkd("distill", "--labels", str(self.labels), "--k", str(k), *common,
                  log=self.work / "logs" / f"{run.name}.log")
        print(f"{run.name}: trained in {time.perf_counter() - began:.0f} s", flush=True)

    def score(self, model: Path, split: str) -> tuple[dict, dict]:
        from scoring.report import evaluation

        return evaluation(model, self.data / split, DECODE, self.work / "evals")

    def table(self) -> dict:
        """Every finished model on every split; KD rows against their size's GT twin on test."""
        models = {"whisper tiny.en": self.whisper}
        for size in SIZES:
            for config in CONFIGS:
                run = self.run_dir(size, config)
                if (run / "bundle").is_dir():
                    models[f"{size} {config}"] = run / "bundle"
        teacher = self.score(self.whisper, RTF_SPLIT)[0]
        rows = []
        for name, model in models.items():
            row = {"model": name, "bundle": str(model)}
            for split in SPLITS:
                result, per_utt = self.score(model, split)
                row[split] = {"wer": result["wer"], "cer": result["cer"], "utts": result["utterances"]}
                row.setdefault("params", result["params"])
                if split == RTF_SPLIT:
                    row["rtf"] = result["rtf"]
            row["compression"] = teacher["params"] / row["params"]
            row["speed_vs_whisper"] = teacher["rtf"] / row["rtf"]
            size, _, config = name.partition(" ")
            if CONFIGS.get(config) is not None and (self.run_dir(size, "gt") / "bundle").is_dir():
                meta = json.loads((model / "meta.json").read_text())
                row.update(steps=meta["steps"], train_s=meta["train_seconds"])
                row["vs_gt"] = {split: self._vs(model, self.run_dir(size, "gt") / "bundle", split)
                                for split in SPLITS}
                row["vs_whisper_test"] = self._vs(model, self.whisper, "test")
            elif config == "gt":
                meta = json.loads((model / "meta.json").read_text())
                row.update(steps=meta["steps"], train_s=meta["train_seconds"])
            rows.append(row)
        return {"decode": DECODE.__dict__, "whisper": str(self.whisper), "seed": self.args.seed,
                "data": str(self.data), "rows": rows}

    def _vs(self, a: Path, b: Path, split: str) -> dict:
        mine, theirs = self.score(a, split)[1], self.score(b, split)[1]
        ids = sorted(mine.keys() & theirs.keys())
        diff = bootstrap_wer([mine[u][0] for u in ids], [mine[u][1] for u in ids], [theirs[u][0] for u in ids])
        return {"diff": diff.value, "ci95": diff.ci95, "p": diff.p_value}

    def write(self) -> None:
        table = self.table()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "whisper_study.json").write_text(json.dumps(table, indent=2))
        (self.out / "whisper_study.md").write_text(markdown(table))
        print(markdown(table), flush=True)


def markdown(table: dict) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.2f}"

    def ci(d: dict | None) -> str:
        if not d:
            return ""
        lo, hi = d["ci95"]
        return f"{100 * d['diff']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"

    lines = ["WER % (CER %) on each split; RTF on the CPU (2 threads, on the unseen-engine split); 'vs GT' is the KD student's test "
             "WER minus its GT twin's, 'vs Whisper' minus Whisper's, each with the paired bootstrap's "
             "95% CI over utterances. KD students read no transcript (labels and tokenizer from "
             f"Whisper's 5-best); seed {table['seed']}.", "",
             "| model | params | smaller | test | unseen engine | recorded (Asterisk) | RTF | faster | "
             "test vs GT | test vs Whisper | steps | train s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in table["rows"]:
        cells = [f"{pct(r[s]['wer'])} ({pct(r[s]['cer'])})" for s in SPLITS]
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['compression']:.1f}x | {' | '.join(cells)} | "
            f"{r['rtf']:.4f} | {r['speed_vs_whisper']:.1f}x | {ci(r.get('vs_gt', {}).get('test'))} | "
            f"{ci(r.get('vs_whisper_test'))} | {r.get('steps', '')} | "
            f"{'' if r.get('train_s') is None else round(r['train_s'])} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--whisper", required=True, help="Whisper CTranslate2 directory")
    p.add_argument("--work", required=True, help="labels, runs and evaluations (resumable)")
    p.add_argument("--out", required=True, help="where whisper_study.md and .json go")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--side-by-side", type=int, default=2, choices=[1, 2],
                   help="training runs at once (2: each on one core)")
    p.add_argument("--table-only", action="store_true", help="rewrite the table from finished runs")
    args = p.parse_args()
    study = Study(args)
    if not args.table_only:
        study.label()
        jobs = [(size, config) for size in args.sizes for config in CONFIGS]
        with ThreadPoolExecutor(args.side_by_side) as pool:
            for _ in pool.map(lambda job: study.train(*job), jobs):
                pass
    study.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
