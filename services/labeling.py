"""Distributed labeling: the teacher's N-best for every utterance of a corpus, with Ray Data.

    seqkd label BUNDLE --data D/train --out L/train [--beam 10 --nbest 5 --concurrency 1:4]
    ray job submit --working-dir . -- python -m seqkd label BUNDLE --data ... --out ...

The pending manifest shards are read as one Ray Dataset (utterance ids and audio only);
`map_batches` runs the teacher in an autoscaling actor pool (the bundle loaded once per actor;
GPUs or custom resources requested per actor, so the cluster autoscaler adds the nodes that can
hold more actors; any kind of teacher `common.teachers` reads: a seqkd bundle, its ONNX export,
a Whisper CTranslate2 directory) or, with `--via-serve`, sends the audio to a running teacher deployment
through a DeploymentHandle. Labelers send back ids and hypotheses, never the audio. The driver
gathers the hypotheses of each input shard; when every one of its utterances is there, it joins
them to the input shard read back from disk, writes the output shard with the same name (temp
file + rename) and forgets them, so its memory is one shard's hypotheses, not the corpus. An
output shard that exists is complete, a re-run skips it, and a killed worker (whose task Ray
retries) neither loses nor duplicates an utterance. `labels.json` records the teacher (kind and id), its
tokenizer (copied beside the shards under its own name: a seqkd teacher's tokenizer.model, which
its students share; Whisper's tokenizer.json, which they cannot), the decode settings,
the shards done and the input shards skipped as damaged (`common.corpora.manifest.check_shards`:
each named with its reason; every good shard is still labelled, and a re-run after a repair
labels only the repaired one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from common.audio import AudioError
from common.beam_search import BeamConfig
from common.corpora.manifest import BadShard, check_shards, write_shard
from common.labels import (CTC_TOPM_IDS, CTC_TOPM_LOGP, DECODE, HYP, HYP_TEXT, HYP_TOKENS, HYPS, INDEX,
                           LABEL_SCHEMA, TEACHER_ID, label_settings, same_settings)
from common.metrics import error_rates
from common.teachers import TeacherFiles, teacher_files, teacher_meta
from services.capacity import actor_request, warn_if_unsatisfiable
from services.overload import Backoff, retry_hint

log = logging.getLogger(__name__)

FAIL_ENV = "SEQKD_LABEL_FAIL_AFTER"   # fault injection for tests: kill one actor after K batches
READ_COLUMNS = ["utt_id", "audio"]    # all a labeler needs; the rest of a row stays on disk


class LabelError(ValueError):
    """A labeling run that cannot start: the message says what to do."""


@dataclass
class LabelSummary:
    shards_done: int
    shards_skipped: int
    utterances: int
    hours: float
    decode_s: float
    rtf: float
    mean_hyp_tokens: float
    wer_1best: float | None
    unusable: int
    damaged: dict[str, str]   # input shard path -> why it cannot be read; not labelled

    def line(self) -> str:
        wer = f"{100 * self.wer_1best:.2f}%" if self.wer_1best is not None else "n/a (no transcripts)"
        return (f"labelled {self.utterances} utts ({self.hours:.3f} h) in {self.shards_done} shards "
                f"({self.shards_skipped} already done, {len(self.damaged)} damaged and not labelled), "
                f"{self.utterances / max(self.decode_s, 1e-9):.1f} "
                f"utts/s, RTF {self.rtf:.4f}, mean 1-best length {self.mean_hyp_tokens:.1f} tokens, "
                f"1-best WER vs transcript {wer}, {self.unusable} unusable audio")


class TeacherLabeler:
    """Ray Data actor: one teacher per actor, a batch of (utt_id, audio, path) in, ids + N-best out."""

    def __init__(self, bundle: str, decode: dict, device: str, fail_after: int, marker: str,
                 threads: int = 1, compute_type: str = "auto", language: str | None = None) -> None:
        import torch

        from common.teachers import load_transcriber

        # Ray gives an actor one thread; the search takes its share of the cores (of this node)
        threads = max(1, min(threads, len(os.sched_getaffinity(0))))
        torch.set_num_threads(threads)
        self.transcriber = load_transcriber(bundle, device, compute_type, language, threads)
        self.cfg = BeamConfig(**decode)
        self.fail_after, self.marker, self.batches = fail_after, Path(marker), 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        waves, ok = [], []
        for i, audio in enumerate(batch.column("audio").to_pylist()):
            try:
                waves.append(self.transcriber.load(audio))
                ok.append(i)
            except AudioError as exc:
                log.warning("no labels for %s: %s", batch.column("utt_id")[i].as_py(), exc)
        hyps: list[list[dict]] = [[] for _ in range(batch.num_rows)]
        ctc: list[tuple | None] = [None] * batch.num_rows
        for i, t in zip(ok, self.transcriber.transcribe_waves(waves, self.cfg)):
            hyps[i] = [n.as_dict() for n in t.nbest]
            ctc[i] = t.ctc_topm
        self.batches += 1
        if self.fail_after and self.batches >= self.fail_after and not self.marker.exists():
            self.marker.write_text(str(self.batches))
            os._exit(1)   # the actor dies mid-run, as a preempted GPU node would
        return labels_of(batch, hyps, self.transcriber.teacher_id, ctc)


class ServeLabeler:
    """Ray Data actor: the same, decoded by a running teacher deployment (one GPU fleet for both).
    A busy fleet's refusals are retried with backoff (they are not answers, so never empty labels)."""

    def __init__(self, app: str, decode: dict, backoff: Backoff = Backoff()) -> None:
        from ray import serve

        self.handle = serve.get_app_handle(app)
        self.decode, self.backoff = decode, backoff

    def __call__(self, batch: pa.Table) -> pa.Table:
        answers = decode_all(self.handle, batch.column("audio").to_pylist(), self.decode, self.backoff)
        hyps, teacher = [], ""
        for utt, answer in zip(batch.column("utt_id").to_pylist(), answers):
            if isinstance(answer, Exception):   # the deployment's AudioError arrives wrapped by Ray
                log.warning("no labels for %s: %s", utt, str(answer).splitlines()[-1])
                answer = {"nbest": []}
            hyps.append(answer["nbest"])
            teacher = answer.get("model", teacher)
        return labels_of(batch, hyps, teacher)


def decode_all(handle, audio: list[bytes], options: dict, backoff: Backoff) -> list[dict | Exception]:
    """Each audio's answer from the deployment, or the error it ended with. Those refused for load
    are sent again after a backoff, up to `backoff.attempts` times, then the batch fails in one line
    (Ray Data retries or the job stops; a re-run resumes), rather than waiting without end."""
    answers: list[dict | Exception | None] = [None] * len(audio)
    todo = list(range(len(audio)))
    for attempt in range(backoff.attempts):
        replies = {i: handle.decode.remote(audio[i], options) for i in todo}
        todo, hint = [], 0.0
        for i, reply in replies.items():
            try:
                answers[i] = reply.result()
            except Exception as exc:
                wait = retry_hint(exc)
                if wait is None:
                    answers[i] = exc
                else:
                    todo.append(i)
                    hint = max(hint, wait)
        if not todo:
            return answers
        if attempt + 1 < backoff.attempts:
            time.sleep(backoff.delay(attempt, hint))
    raise LabelError(f"the teacher deployment refused {len(todo)} of {len(audio)} utterances as busy "
                     f"{backoff.attempts} times: add replicas or lower --concurrency / --batch-size")


def labels_of(batch: pa.Table, hyps: list[list[dict]], teacher_id: str,
              ctc: list[tuple | None] | None = None) -> pa.Table:
    """What a labeler sends back: the utterance and shard it is for and the teacher's output,
    never the audio (the driver joins this to the input shard on disk)."""
    n = batch.num_rows
    ctc = ctc or [None] * n
    return pa.table({
        "utt_id": batch.column("utt_id"), "path": batch.column("path"),
        HYPS: pa.array(hyps, type=pa.list_(HYP)),
        TEACHER_ID: pa.array([teacher_id] * n, pa.string()),
        CTC_TOPM_IDS: pa.array([c and c[0] for c in ctc], LABEL_SCHEMA.field(CTC_TOPM_IDS).type),
        CTC_TOPM_LOGP: pa.array([c and c[1] for c in ctc], LABEL_SCHEMA.field(CTC_TOPM_LOGP).type),
    })


@dataclass
class Totals:
    """Running sums over the shards written, so the summary needs none of their rows kept."""

    utterances: int = 0
    audio_s: float = 0.0
    labelled: int = 0
    hyp_tokens: int = 0
    words: int = 0
    word_errors: int = 0

    def add(self, rows: list[dict]) -> None:
        self.utterances += len(rows)
        self.audio_s += sum(r["duration_s"] for r in rows)
        labelled = [r for r in rows if r[HYPS]]
        self.labelled += len(labelled)
        self.hyp_tokens += sum(len(r[HYPS][0][HYP_TOKENS]) for r in labelled)
        scored = [r for r in labelled if r["text"].strip()]
        if scored:   # corpus WER = summed errors / summed reference words, shard by shard
            rates = error_rates([r["text"] for r in scored], [r[HYPS][0][HYP_TEXT] for r in scored])
            self.words += rates.words
            self.word_errors += rates.substitutions + rates.deletions + rates.insertions

    def summary(self, done: int, skipped: int, seconds: float, damaged: list[BadShard]) -> LabelSummary:
        return LabelSummary(
            shards_done=done, shards_skipped=skipped, utterances=self.utterances,
            hours=self.audio_s / 3600, decode_s=seconds, rtf=seconds / max(self.audio_s, 1e-9),
            mean_hyp_tokens=self.hyp_tokens / max(self.labelled, 1),
            wer_1best=self.word_errors / self.words if self.words else None,
            unusable=self.utterances - self.labelled, damaged={str(b.path): b.reason for b in damaged})


class ShardAssembler:
    """The driver's side: holds the labels of the shards not yet complete, and writes each shard
    (input shard from disk + its labels) the moment its last utterance arrives, then drops them."""

    def __init__(self, out: Path, inputs: dict[str, Path], index: dict, teacher_id: str,
                 decode_json: str) -> None:
        self.out, self.inputs, self.index = out, inputs, index
        self.teacher_id, self.decode_json = teacher_id, decode_json
        self.expected = {name: pq.ParquetFile(p).metadata.num_rows for name, p in inputs.items()}
        self.parts: dict[str, list[pa.Table]] = defaultdict(list)
        self.ids: dict[str, set[str]] = defaultdict(set)
        self.totals = Totals()

    @property
    def received(self) -> int:
        return self.totals.utterances + sum(len(ids) for ids in self.ids.values())

    def add(self, batch: pa.Table) -> None:
        paths = batch.column("path")
        for path in pc.unique(paths).to_pylist():
            name = Path(path).name
            if name not in self.expected:   # rows of a shard already written: a retry's echo
                continue
            part = batch.filter(pc.equal(paths, path)).drop_columns(["path"])
            self.parts[name].append(part)
            self.ids[name].update(part.column("utt_id").to_pylist())
            if len(self.ids[name]) == self.expected[name]:
                self._write(name)

    def missing(self) -> dict[str, int]:
        """Utterances not labelled, per shard not written."""
        return {name: n - len(self.ids.get(name, ())) for name, n in self.expected.items()}

    def _write(self, name: str) -> None:
        """Write one output shard in its input's row order, then record it in labels.json."""
        labels = pa.concat_tables(self.parts.pop(name))
        del self.ids[name], self.expected[name]
        if pc.unique(labels.column(TEACHER_ID)).to_pylist() != [self.teacher_id]:
            raise LabelError(f"shard {name} was labelled by another teacher than {self.teacher_id}")
        rows = joined(pq.read_table(self.inputs[name]), labels, self.decode_json)
        write_shard(self.out / name, rows, LABEL_SCHEMA)
        self.index["shards"][name] = len(rows)
        save_index(self.out, self.index)
        self.totals.add(rows)


def joined(source: pa.Table, labels: pa.Table, decode_json: str) -> list[dict]:
    """The output shard's rows: every input column, in input order, plus the label columns."""
    last = {u: i for i, u in enumerate(labels.column("utt_id").to_pylist())}   # a retry replaces
    labels = labels.take([last[u] for u in source.column("utt_id").to_pylist()])
    for field in LABEL_SCHEMA:
        if field.name == DECODE:
            source = source.append_column(field, pa.array([decode_json] * source.num_rows, pa.string()))
        elif field.name not in source.column_names:
            source = source.append_column(field, labels.column(field.name))
    return source.select(LABEL_SCHEMA.names).to_pylist()


def label(bundle: str | Path | None, data: str | Path, out: str | Path, decode: BeamConfig,
          batch_size: int = 16, concurrency: int | tuple[int, int] = 1, num_gpus: float = 0.0,
          via_serve: str | None = None, show_progress: bool = True,
          resources: dict[str, float] | None = None, fail_fast: bool = False,
          compute_type: str = "auto", language: str | None = None) -> LabelSummary:
    """Label every pending readable shard of `data` into `out`; Ray must be initialised.

    `concurrency` is a fixed pool size or (min, max) for Ray Data's autoscaling actor pool;
    `num_gpus` and `resources` are what each teacher actor asks for (so an autoscaler knows
    which nodes to add). Damaged input shards are named in the summary's `damaged` and in
    labels.json's `skipped`, and the others labelled; `fail_fast` refuses at the first one.
    `compute_type` and `language` are a Whisper teacher's (common.teachers.load_transcriber)."""
    import ray.data

    from common.shard_dataset import read_shards

    decode.validate()
    good, bad = check_shards(data, fail_fast=fail_fast)
    if fail_fast and bad:
        raise LabelError(f"{bad[0].line()} (--fail-fast: nothing labelled)")
    pool = pool_bounds(concurrency)
    if not via_serve:
        warn_if_unsatisfiable(actor_request(num_gpus, resources), pool)
    settings = asdict(decode)              # what the labelers decode with
    recorded = label_settings(decode)      # what labels.json and every shard record of it
    out = Path(out)
    teacher = _teacher(bundle, via_serve)
    try:
        teacher.check_config(decode)
    except ValueError as exc:
        raise LabelError(f"{exc}; label this teacher with --topm 0 and --ctc-weight 0") from None
    teacher_id = teacher.teacher_id
    inputs = {p.name: p for p in good}
    out.mkdir(parents=True, exist_ok=True)
    index = _open_index(out, teacher, recorded)
    for tmp in out.glob(".shard-*.tmp"):   # a run killed while writing: redo that shard
        tmp.unlink()
    pending = {name: p for name, p in inputs.items() if not (out / name).exists()}
    damaged = [b for b in bad if not (out / b.path.name).exists()]   # labelled before it broke: done
    index["skipped"] = {b.path.name: b.reason for b in damaged}
    save_index(out, index)
    shards = ShardAssembler(out, pending, index, teacher_id, json.dumps(recorded, sort_keys=True))
    began = time.perf_counter()
    if pending:
        ds = read_shards([str(p) for p in pending.values()], READ_COLUMNS, include_paths=True)
        strategy = ray.data.ActorPoolStrategy(min_size=pool[0], max_size=pool[1])
        if via_serve:
            ds = ds.map_batches(ServeLabeler, fn_constructor_args=(via_serve, settings), num_cpus=0,
                                batch_format="pyarrow", batch_size=batch_size, compute=strategy)
        else:
            cpus = ray.cluster_resources().get("CPU", 1)
            ds = ds.map_batches(
                TeacherLabeler, batch_format="pyarrow", batch_size=batch_size, compute=strategy,
                num_gpus=num_gpus or None, resources=resources or None,
                fn_constructor_args=(str(bundle), settings, "cuda" if num_gpus else "cpu",
                                     int(os.environ.get(FAIL_ENV, "0")), str(out / ".fault_injected"),
                                     max(1, int(cpus) // pool[1]), compute_type, language))
        # blocks reach the driver in input order (the actors still work in parallel), so it holds
        # about one shard's labels at a time instead of many shards' beginnings
        ds.context.execution_options.preserve_order = True
        _collect(ds, shards, len(inputs), show_progress)
    missing = shards.missing()
    if missing:   # cannot happen unless rows were dropped upstream; never write such a shard
        raise LabelError(f"labeling lost utterances of {len(missing)} shards ({missing}); re-run to redo them")
    return shards.totals.summary(len(pending), len(inputs) - len(pending), time.perf_counter() - began,
                                 damaged)


def _collect(ds, shards: ShardAssembler, total_shards: int, show_progress: bool) -> None:
    """Stream the labelers' output into the shard assembler, with a progress bar."""
    columns = [TextColumn("[bold]label"), BarColumn(), MofNCompleteColumn(), TextColumn("utts"),
               TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[shards]}"),
               TimeRemainingColumn()]
    began = time.perf_counter()
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task("label", total=sum(shards.expected.values()), shards="", rate="")
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            shards.add(batch)
            done = shards.received
            progress.update(task, completed=done,
                            rate=f"{done / (time.perf_counter() - began):.1f} utts/s",
                            shards=f"{len(shards.index['shards'])}/{total_shards} shards")


def pool_bounds(concurrency: int | tuple[int, int]) -> tuple[int, int]:
    """(min, max) actors: a single number is a fixed pool."""
    lo, hi = (concurrency, concurrency) if isinstance(concurrency, int) else concurrency
    if not 1 <= lo <= hi:
        raise LabelError(f"--concurrency {lo if lo == hi else f'{lo}:{hi}'}: want N >= 1 or "
                         f"MIN:MAX with 1 <= MIN <= MAX")
    return lo, hi


MAX_TEACHER_DEV_WER = 0.5


def weak_teacher(bundle: str | Path, max_dev_wer: float = MAX_TEACHER_DEV_WER) -> str | None:
    """One line when the teacher's best dev WER (its bundle's meta) is above `max_dev_wer`.

    A teacher whose attention never aligned still emits fluent text; distilled, it teaches its
    student to be wrong (measured: +33.3 WER points against the GT twin) while every stage
    finishes. Nothing else in labeling can tell, so the check reads what training measured
    (a teacher seqkd did not train, e.g. Whisper, records none and is not checked)."""
    meta = teacher_meta(bundle)
    dev_wer = meta.get("dev_wer", meta.get("best_dev_wer"))
    if dev_wer is None or dev_wer <= max_dev_wer:
        return None
    return (f"the teacher scored {100 * dev_wer:.1f}% WER on its dev set (over {100 * max_dev_wer:.0f}%): "
            f"its labels will teach its errors; train it longer or check its data")


def _teacher(bundle: str | Path | None, via_serve: str | None) -> TeacherFiles:
    """The teacher's kind, id and tokenizer file, from the directory or the running deployment."""
    if via_serve:
        from ray import serve

        return serve.get_app_handle(via_serve).teacher_files.remote().result()
    from common.bundle import BundleError

    try:
        return teacher_files(bundle)
    except BundleError as exc:
        raise LabelError(str(exc)) from None


def save_index(out: Path, index: dict) -> None:
    """labels.json, replaced atomically: a reader (or a re-run) never sees half of it."""
    tmp = out / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    tmp.replace(out / INDEX)


def _open_index(out: Path, teacher: TeacherFiles, settings: dict) -> dict:
    """labels.json of `out` (with the teacher's tokenizer beside it), refusing to mix teachers or
    decode settings in one output (those that change the labels: common.labels.LABEL_SETTINGS)."""
    path = out / INDEX
    if not path.exists():
        index = {"teacher_id": teacher.teacher_id, "teacher_kind": teacher.kind, "decode": settings,
                 "tokenizer": teacher.tokenizer_name,
                 "tokenizer_sha256": hashlib.sha256(teacher.tokenizer).hexdigest(), "shards": {}}
        (out / teacher.tokenizer_name).write_bytes(teacher.tokenizer)
        path.write_text(json.dumps(index, indent=2))
        return index
    index = json.loads(path.read_text())
    if index["teacher_id"] != teacher.teacher_id:
        raise LabelError(f"{out} holds labels by teacher {index['teacher_id']}, not {teacher.teacher_id}: "
                         f"refusing to mix teachers; use a new --out")
    if not same_settings(index["decode"], settings):
        raise LabelError(f"{out} was labelled with decode settings {index['decode']}, not {settings}: "
                         f"refusing to mix settings; use a new --out")
    return index
