"""Distributed labeling: the teacher's N-best for every utterance of a corpus, with Ray Data.

    seqkd label BUNDLE --data D/train --out L/train [--beam 10 --nbest 5 --concurrency 2]
    ray job submit --working-dir . -- python -m seqkd label BUNDLE --data ... --out ...

The pending manifest shards are read as one Ray Dataset; `map_batches` runs the teacher in an
actor pool (the bundle loaded once per actor, GPUs requested when asked) or, with
`--via-serve`, sends the audio to a running teacher deployment through a DeploymentHandle.
The driver gathers the labelled rows of each input shard and writes the output shard with the
same name (temp file + rename) only when every one of its utterances is there, so an output
shard that exists is complete, a re-run skips it, and a killed worker (whose task Ray retries)
neither loses nor duplicates an utterance. `labels.json` records the teacher, its tokenizer
(copied beside the shards as tokenizer.model, for the students), the decode
settings and the shards done.
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
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from common.audio import AudioError
from common.beam_search import BeamConfig
from common.corpora.manifest import shard_paths, write_shard
from common.labels import HYP, INDEX, LABEL_SCHEMA, TOKENIZER
from common.metrics import error_rates

log = logging.getLogger(__name__)

FAIL_ENV = "SEQKD_LABEL_FAIL_AFTER"   # fault injection for tests: kill one actor after K batches


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

    def line(self) -> str:
        wer = f"{100 * self.wer_1best:.2f}%" if self.wer_1best is not None else "n/a (no transcripts)"
        return (f"labelled {self.utterances} utts ({self.hours:.3f} h) in {self.shards_done} shards "
                f"({self.shards_skipped} already done), {self.utterances / max(self.decode_s, 1e-9):.1f} "
                f"utts/s, RTF {self.rtf:.4f}, mean 1-best length {self.mean_hyp_tokens:.1f} tokens, "
                f"1-best WER vs transcript {wer}, {self.unusable} unusable audio")


class TeacherLabeler:
    """Ray Data actor: one teacher per actor, a batch of manifest rows in, the same rows + N-best out."""

    def __init__(self, bundle: str, decode: dict, device: str, fail_after: int, marker: str,
                 threads: int = 1) -> None:
        import torch

        from common.transcriber import Transcriber

        # Ray gives an actor one thread; the search takes its share of the cores (of this node)
        torch.set_num_threads(max(1, min(threads, len(os.sched_getaffinity(0)))))
        self.transcriber = Transcriber(bundle, device=device)
        self.cfg = BeamConfig(**decode)
        self.decode_json = json.dumps(decode, sort_keys=True)
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
        return with_labels(batch, hyps, self.transcriber.bundle.bundle_id, self.decode_json, ctc)


class ServeLabeler:
    """Ray Data task: the same, decoded by a running teacher deployment (one GPU fleet for both)."""

    def __init__(self, app: str, decode: dict) -> None:
        from ray import serve

        self.handle = serve.get_app_handle(app)
        self.decode = decode
        self.decode_json = json.dumps(decode, sort_keys=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        pending = [self.handle.decode.remote(a, self.decode) for a in batch.column("audio").to_pylist()]
        hyps, teacher = [], ""
        for utt, reply in zip(batch.column("utt_id").to_pylist(), pending):
            try:
                answer = reply.result()
            except Exception as exc:   # the deployment's AudioError arrives wrapped by Ray
                log.warning("no labels for %s: %s", utt, str(exc).splitlines()[-1])
                answer = {"nbest": []}
            hyps.append(answer["nbest"])
            teacher = answer.get("model", teacher)
        return with_labels(batch, hyps, teacher, self.decode_json)


def with_labels(batch: pa.Table, hyps: list[list[dict]], teacher_id: str, decode: str,
                ctc: list[tuple | None] | None = None) -> pa.Table:
    n = batch.num_rows
    ctc = ctc or [None] * n
    return (batch.append_column("hyps", pa.array(hyps, type=pa.list_(HYP)))
            .append_column("teacher_id", pa.array([teacher_id] * n, pa.string()))
            .append_column("decode", pa.array([decode] * n, pa.string()))
            .append_column("ctc_topm_ids", pa.array([c and c[0] for c in ctc],
                                                    LABEL_SCHEMA.field("ctc_topm_ids").type))
            .append_column("ctc_topm_logp", pa.array([c and c[1] for c in ctc],
                                                     LABEL_SCHEMA.field("ctc_topm_logp").type)))


def label(bundle: str | Path | None, data: str | Path, out: str | Path, decode: BeamConfig,
          batch_size: int = 16, concurrency: int = 1, num_gpus: float = 0.0,
          via_serve: str | None = None, show_progress: bool = True) -> LabelSummary:
    """Label every pending shard of `data` into `out`; Ray must be initialised."""
    import ray.data

    decode.validate()
    cpus = ray.cluster_resources().get("CPU", 0)
    if concurrency < 1 or (not via_serve and concurrency > cpus - 1):
        raise LabelError(f"--concurrency {concurrency}: each teacher actor takes a CPU and reading "
                         f"shards needs one more; this cluster has {cpus:g} CPUs, so use "
                         f"1..{max(1, int(cpus) - 1)}")
    settings = asdict(decode)
    out = Path(out)
    teacher_id, tokenizer = _teacher(bundle, via_serve)
    inputs = {p.name: p for p in shard_paths(data)}
    out.mkdir(parents=True, exist_ok=True)
    index = _open_index(out, teacher_id, tokenizer, settings)
    for tmp in out.glob(".shard-*.tmp"):   # a run killed while writing: redo that shard
        tmp.unlink()
    pending = {name: p for name, p in inputs.items() if not (out / name).exists()}
    expected = {name: pq.ParquetFile(p).metadata.num_rows for name, p in pending.items()}
    began = time.perf_counter()
    rows_of: dict[str, dict[str, dict]] = defaultdict(dict)
    if pending:
        ds = ray.data.read_parquet([str(p) for p in pending.values()], include_paths=True,
                                   file_extensions=["parquet"])
        if via_serve:
            ds = ds.map_batches(ServeLabeler, fn_constructor_args=(via_serve, settings), num_cpus=0,
                                batch_format="pyarrow", batch_size=batch_size, concurrency=concurrency)
        else:
            fail_after = int(os.environ.get(FAIL_ENV, "0"))
            ds = ds.map_batches(
                TeacherLabeler, batch_format="pyarrow", batch_size=batch_size, concurrency=concurrency,
                num_gpus=num_gpus or None,
                fn_constructor_args=(str(bundle), settings, "cuda" if num_gpus else "cpu", fail_after,
                                     str(out / ".fault_injected"), max(1, int(cpus) // concurrency)))
        columns = [TextColumn("[bold]label"), BarColumn(), MofNCompleteColumn(), TextColumn("utts"),
                   TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[shards]}"),
                   TimeRemainingColumn()]
        with Progress(*columns, disable=not show_progress) as progress:
            task = progress.add_task("label", total=sum(expected.values()), shards="", rate="")
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                for row in batch.to_pylist():
                    name = Path(row.pop("path")).name
                    rows_of[name][row["utt_id"]] = row   # a retried task's rows replace, never add
                    if len(rows_of[name]) == expected[name]:
                        _write(out, name, inputs[name], rows_of[name], index, teacher_id)
                done = sum(len(r) for r in rows_of.values())
                progress.update(task, completed=done,
                                rate=f"{done / (time.perf_counter() - began):.1f} utts/s",
                                shards=f"{len(index['shards'])}/{len(inputs)} shards")
    missing = {n: expected[n] - len(rows_of.get(n, {})) for n in pending
               if len(rows_of.get(n, {})) != expected[n]}
    if missing:   # cannot happen unless rows were dropped upstream; never write such a shard
        raise LabelError(f"labeling lost utterances of {len(missing)} shards ({missing}); re-run to redo them")
    return _summary(rows_of, len(pending), len(inputs) - len(pending), time.perf_counter() - began)


def _teacher(bundle: str | Path | None, via_serve: str | None) -> tuple[str, bytes]:
    """The teacher's id and its tokenizer model (students must share it)."""
    if via_serve:
        from ray import serve

        handle = serve.get_app_handle(via_serve)
        return handle.teacher_id.remote().result(), handle.tokenizer_model.remote().result()
    from common.bundle import BundleError, bundle_id

    try:
        return bundle_id(bundle), (Path(bundle) / TOKENIZER).read_bytes()
    except BundleError as exc:
        raise LabelError(str(exc)) from None


def _open_index(out: Path, teacher_id: str, tokenizer: bytes, settings: dict) -> dict:
    """labels.json of `out` (with the teacher's tokenizer beside it), refusing to mix teachers or
    decode settings in one output."""
    path = out / INDEX
    if not path.exists():
        index = {"teacher_id": teacher_id, "decode": settings,
                 "tokenizer_sha256": hashlib.sha256(tokenizer).hexdigest(), "shards": {}}
        (out / TOKENIZER).write_bytes(tokenizer)
        path.write_text(json.dumps(index, indent=2))
        return index
    index = json.loads(path.read_text())
    if index["teacher_id"] != teacher_id:
        raise LabelError(f"{out} holds labels by teacher {index['teacher_id']}, not {teacher_id}: "
                         f"refusing to mix teachers; use a new --out")
    if index["decode"] != settings:
        raise LabelError(f"{out} was labelled with decode settings {index['decode']}, not {settings}: "
                         f"refusing to mix settings; use a new --out")
    return index


def _write(out: Path, name: str, source: Path, rows: dict[str, dict], index: dict, teacher_id: str) -> None:
    """Write one output shard in its input's row order, then record it in labels.json."""
    if any(r["teacher_id"] != teacher_id for r in rows.values()):
        raise LabelError(f"shard {name} was labelled by another teacher than {teacher_id}")
    order = pq.read_table(source, columns=["utt_id"]).column("utt_id").to_pylist()
    write_shard(out / name, [rows[u] for u in order], LABEL_SCHEMA)
    index["shards"][name] = len(order)
    tmp = out / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    tmp.replace(out / INDEX)


def _summary(rows_of: dict[str, dict[str, dict]], done: int, skipped: int, seconds: float) -> LabelSummary:
    rows = [r for shard in rows_of.values() for r in shard.values()]
    audio_s = sum(r["duration_s"] for r in rows)
    labelled = [r for r in rows if r["hyps"]]
    scored = [r for r in labelled if r["text"].strip()]
    wer = error_rates([r["text"] for r in scored], [r["hyps"][0]["text"] for r in scored]).wer \
        if scored else None
    return LabelSummary(
        shards_done=done, shards_skipped=skipped, utterances=len(rows), hours=audio_s / 3600,
        decode_s=seconds, rtf=seconds / max(audio_s, 1e-9),
        mean_hyp_tokens=sum(len(r["hyps"][0]["tokens"]) for r in labelled) / max(len(labelled), 1),
        wer_1best=wer, unusable=len(rows) - len(labelled))
