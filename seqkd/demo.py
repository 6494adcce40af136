"""`seqkd demo`: the whole system on one machine, stage by stage, each stage resumable.

    data -> teacher (Ray Train) -> serve (Ray Serve, a few files over HTTP) -> label (Ray Data)
         -> students on ground truth and by sequence-level KD (Ray Train) -> report

Every stage leaves its result in OUT and a line in OUT/demo.json; a re-run reuses finished
stages (a finished run directory holds bundle/, a started one is resumed). The settings were
chosen on the dev split; the report scores the test split.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from common.beam_search import BeamConfig
from common.corpora.manifest import iter_rows
from common.kd import KDConfig
from trainer.data import PseudoLabels
from seqkd.console import wide_console

CONF = Path(__file__).resolve().parent.parent / "conf"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and budgets of one demo; `FULL` is `make demo`, `QUICK` is CI's smoke run."""

    train: int
    dev: int
    test: int
    students: tuple[str, ...]
    max_words: int = 6                      # short phrases: attention aligns within minutes
    teacher_epochs: int | None = None       # None: the recipe's
    student_epochs: int | None = None
    max_steps: int | None = None            # caps every training run (quick mode)
    # beam 5, kept 1-best (all that k = 1 reads; the same 1-best as a 5-best), teacher's top 8
    label: BeamConfig = field(default_factory=lambda: BeamConfig(beam=5, nbest=1, ctc_weight=0.3, topm=8))
    decode: BeamConfig = field(default_factory=lambda: BeamConfig(beam=5, nbest=1, ctc_weight=0.3))
    # chosen on the dev split by bench/paper_table.py (docs/study.md): the teacher's 1-best with
    # word-level (decoder) and frame-level (CTC) KD, each at half the weight of its branch; k = 1
    # also keeps the KD run's cost that of the GT run (k = 5 doubles the decoder's work)
    pseudo: PseudoLabels = PseudoLabels(k=1)
    kd: KDConfig = KDConfig(word_kd=0.5, frame_kd=0.5)
    http_files: int = 3
    test_unseen_engine: int = 100           # test utterances of an engine no training one uses
    recorded: bool = True                   # score every model on the Asterisk recordings too
    seed: int = 0
    teacher: str = "teacher"


FULL = DemoSettings(train=2000, dev=100, test=500, students=("student_small",))
QUICK = DemoSettings(train=48, dev=8, test=8, teacher_epochs=1, student_epochs=1,
                     students=("student_small",), max_steps=4,
                     label=BeamConfig(beam=3, nbest=3, ctc_weight=0.3, topm=4),
                     decode=BeamConfig(beam=2, nbest=1, ctc_weight=0.3), pseudo=PseudoLabels(k=3),
                     http_files=2, test_unseen_engine=4, recorded=False)


class Demo:
    def __init__(self, out: str | Path, settings: DemoSettings, console: Console | None = None) -> None:
        self.out, self.s = Path(out).resolve(), settings
        self.console = console or wide_console()
        self.log_path = self.out / "demo.json"
        self.log: dict[str, Any] = json.loads(self.log_path.read_text()) if self.log_path.exists() else {}
        self.log_lock = threading.Lock()
        self.warnings: list[str] = []     # repeated in the summary: a result not to trust

    @property
    def data(self) -> Path:
        return self.out / "data"

    def run(self) -> list:
        import ray

        from seqkd import console

        self.out.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        self.stage_data()
        console.begin()   # Ray's output goes to OUT/ray.log from here on (unless --verbose)
        ray.init(address="local", num_cpus=None, include_dashboard=False)
        try:
            tokenizer = self.stage_tokenizer()
            teacher = self.stage_train(self.s.teacher, self.s.teacher_epochs, tokenizer=tokenizer)
            self.stage_serve(teacher)
            labels = self.stage_label(teacher)
            # each GT twin beside its KD twin: one thread each, the same conditions for both
            students = self.side_by_side([stage for s in self.s.students for stage in (
                lambda s=s: self.stage_train(s, self.s.student_epochs, name=f"{s}_gt", tokenizer=tokenizer),
                lambda s=s: self.stage_distill(s, labels))])
            rows = self.stage_report([teacher, *students], teacher)
        finally:
            ray.shutdown()
        teacher_row = next(r for r in rows if r.role == "teacher")
        self.warnings += [f"{r.name} ({100 * r.wer:.2f}% WER) beats its teacher ({100 * teacher_row.wer:.2f}%): "
                          "the teacher is too weak to distil from" for r in rows
                          if r.role != "teacher" and r.wer < teacher_row.wer]
        for warning in self.warnings:
            self.console.print(f"[bold red]WARNING[/]: {warning}")
        self.record("total", {"seconds": round(time.perf_counter() - began, 1), "warnings": self.warnings})
        self.console.print(f"[bold]demo finished in {time.perf_counter() - began:.0f} s[/]; "
                           f"report in {self.out / 'report'}")
        return rows

    # ----------------------------------------------------------------------------- stages
    def stage_data(self) -> None:
        from seqkd.cli import main as cli

        splits = ["train", "dev", "test", "test_unseen_engine"] + (["recorded"] if self.s.recorded else [])
        if all((self.data / split / "index.json").exists() for split in splits):
            self.say("data", "reusing the corpus in", self.data)
            return
        began = time.perf_counter()
        code = cli(["prepare", "synth", "--out", str(self.data), "--train", str(self.s.train),
                    "--dev", str(self.s.dev), "--test", str(self.s.test),
                    "--test-unseen-engine", str(self.s.test_unseen_engine), "--seed", str(self.s.seed),
                    "--max-words", str(self.s.max_words), "--shard-size", str(max(8, self.s.train // 4))])
        if not code and self.s.recorded:
            code = cli(["prepare", "asterisk", "--out", str(self.data)])
        if code:
            raise SystemExit(code)
        self.record("data", {"seconds": round(time.perf_counter() - began, 1),
                             **{s: json.loads((self.data / s / "index.json").read_text())["utterances"]
                                for s in splits}})

    def stage_tokenizer(self) -> Path:
        """One tokenizer, from the training transcripts, for the teacher and every student: the
        students must speak the teacher's token ids (KD), and the GT twins learn the same ones."""
        from common.corpora.manifest import shard_paths
        from trainer.run import train_tokenizer

        path = self.data / "tokenizer.model"
        if not path.exists():
            train_tokenizer(self.recipe(self.s.teacher, None), shard_paths(self.data / "train")).save(path)
        return path

    def side_by_side(self, stages: list[Callable[[], Path]]) -> list[Path]:
        """Training stages run at once, as many as the node has cores (the students' recipes
        train on one thread), in the order given; their run directories in that order."""
        import ray

        cores = max(1, int(ray.cluster_resources().get("CPU", 1)))
        with ThreadPoolExecutor(max_workers=cores, thread_name_prefix="stage") as pool:
            return [f.result() for f in [pool.submit(stage) for stage in stages]]

    def stage_train(self, recipe_name: str, epochs: int | None, name: str | None = None,
                    tokenizer: Path | None = None) -> Path:
        from common.tokenizer import Tokenizer
        from trainer.run import train

        recipe = self.recipe(recipe_name, epochs)
        return self.run_once(name or recipe_name, lambda run_dir, resume: train(
            recipe, self.data / "train", self.data / "dev", run_dir, resume=resume,
            tokenizer=Tokenizer.load(tokenizer) if tokenizer else None))

    def stage_distill(self, recipe_name: str, labels: Path) -> Path:
        from trainer.distill import distill

        recipe = self.recipe(recipe_name, self.s.student_epochs)
        return self.run_once(f"{recipe_name}_kd", lambda run_dir, resume: distill(
            recipe, labels, self.data / "dev", run_dir, self.s.pseudo, self.s.kd, resume=resume))

    def stage_serve(self, teacher: Path) -> None:
        """The teacher as a Serve deployment; a few test files POSTed to it over HTTP."""
        from ray import serve

        from services.teacher import Teacher

        if "serve" in self.log:
            self.say("serve", "done before:", self.log["serve"]["summary"])
            return
        port = _free_port()
        began = time.perf_counter()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            serve.run(Teacher.bind(bundle=str(teacher / "bundle")), name="teacher", route_prefix="/")
            up = time.perf_counter() - began
            rows = [r for _, r in zip(range(self.s.http_files), iter_rows(self.data / "test",
                                                                          ["utt_id", "audio", "text"]))]
            cfg = self.s.decode
            url = f"http://127.0.0.1:{port}/v1/transcribe?beam={cfg.beam}&ctc_weight={cfg.ctc_weight}"
            seconds = []
            for row in rows:
                sent = time.perf_counter()
                request = urllib.request.Request(url, data=row["audio"],
                                                 headers={"Content-Type": "audio/flac"})
                with urllib.request.urlopen(request, timeout=120) as reply:
                    answer = json.loads(reply.read())
                seconds.append(time.perf_counter() - sent)
                self.console.print(f"  POST {row['utt_id']}: [green]{answer['text']}[/]\n"
                                   f"  {'reference':>{len(row['utt_id']) + 5}}: {row['text']}")
        finally:
            serve.shutdown()
        summary = (f"{len(rows)} files over HTTP, mean latency {sum(seconds) / len(seconds):.2f} s, "
                   f"deployment up in {up:.1f} s")
        self.record("serve", {"summary": summary, "latency_s": seconds})

    def stage_label(self, teacher: Path) -> Path:
        import ray

        from services.labeling import label, weak_teacher

        weak = weak_teacher(teacher / "bundle")
        if weak:
            self.warnings.append(f"teacher: {weak}")
            self.console.print(f"[bold red]WARNING[/]: {weak}")
        out = self.out / "labels" / "train"
        cpus = int(ray.cluster_resources().get("CPU", 1))
        summary = label(teacher / "bundle", self.data / "train", out, self.s.label,
                        concurrency=max(1, cpus - 1), show_progress=self.console.is_terminal)
        if summary.shards_done:
            self.record("label", {"summary": summary.line(), **asdict(summary)})
        else:
            self.say("label", "reusing", out)
        return out

    def stage_report(self, runs: list[Path], teacher: Path) -> list:
        from scoring.report import build_report, evaluation, rich_table, write_report

        began = time.perf_counter()
        out = self.out / "report"
        rows = build_report([r / "bundle" for r in runs], self.data / "test", self.s.decode, out,
                            teacher=teacher / "bundle", console=self.console,
                            recorded=self.data / "recorded" if self.s.recorded else None)
        unseen = {r.name: evaluation(Path(r.bundle), self.data / "test_unseen_engine", self.s.decode,
                                     out / "evals")[0]["wer"] for r in rows}
        for r in rows:
            self.say(r.name, f"WER {100 * unseen[r.name]:.2f}% on test_unseen_engine (an engine no "
                             f"training utterance uses), {100 * r.wer:.2f}% on test")
        title = (f"seqkd demo: four TTS engines, {self.s.train} train utts, test "
                 f"{self.s.test} utts, beam {self.s.decode.beam}")
        write_report(rows, out, title)
        self.console.print(rich_table(rows, title))
        for r in rows:
            if r.wer_diff_vs_gt is not None and r.ci95 is not None:
                verdict = "better" if r.ci95[1] < 0 else "worse" if r.ci95[0] > 0 else "not resolved"
                self.console.print(
                    f"[bold]{r.name}[/] vs {r.gt_twin}: WER {100 * r.wer_diff_vs_gt:+.2f} points, 95% CI "
                    f"[{100 * r.ci95[0]:+.2f}, {100 * r.ci95[1]:+.2f}], p {r.p_value:.4f} "
                    f"(paired bootstrap over {self.s.test} test utterances): KD {verdict}")
        self.record("report", {"seconds": round(time.perf_counter() - began, 1),
                               "rows": [asdict(r) for r in rows], "test_unseen_engine_wer": unseen})
        return rows

    # ----------------------------------------------------------------------------- helpers
    def recipe(self, name: str, epochs: int | None):
        """A recipe as the demo trains it: accounted half a CPU by Ray, so that two one-thread
        students train at once on a 2-core node and still leave Ray a CPU for their featurisation
        tasks. The teacher, alone, takes the node's cores (measured here: 8 epochs in 411 s on two
        threads, 461 s on one with a student beside it for three of them)."""
        from trainer.recipe import load_recipe

        optim: dict[str, Any] = {"epochs": epochs, "seed": self.s.seed}
        if self.s.max_steps:
            optim.update(max_steps=self.s.max_steps, log_every=1, checkpoint_every=1000)
        return load_recipe(CONF / f"{name}.yaml", {"optim": optim, "scaling": {"cpus_per_worker": 0.5}})

    def run_once(self, name: str, run: Callable[[Path, bool], dict]) -> Path:
        """A training stage: reuse a finished run, resume a started one, else start it."""
        run_dir = self.out / "runs" / name
        if (run_dir / "bundle").is_dir():
            self.say(name, "reusing", run_dir / "bundle")
            return run_dir
        began = time.perf_counter()
        summary = run(run_dir, (run_dir / "ray").exists())
        self.record(name, {"seconds": round(time.perf_counter() - began, 1), "run": str(run_dir),
                           **summary})
        return run_dir

    def say(self, stage: str, *what: Any) -> None:
        self.console.print(f"[bold]{stage}[/]:", *what)

    def record(self, stage: str, facts: dict) -> None:
        """One line per stage, in numbers, and the same facts in demo.json (two stages may end
        at once: the students train side by side)."""
        with self.log_lock:
            self.log[stage] = facts
            tmp = self.log_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.log, indent=2, default=str))
            tmp.replace(self.log_path)
        shown = facts.get("summary") or ", ".join(
            f"{k} {v}" for k, v in facts.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        self.say(stage, shown)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(quick: bool, **changes: Any) -> DemoSettings:
    return replace(QUICK if quick else FULL, **{k: v for k, v in changes.items() if v is not None})
