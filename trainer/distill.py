"""Sequence-level knowledge distillation of a student: the same Ray Train run as ground-truth
training, with the teacher's N-best as targets.

The pseudo-label shards written by `seqkd label` are streamed as the training dataset; Ray
Data keeps the top-k hypotheses of each utterance next to its features, and `SequenceKD` is
the objective the training loop calls instead of `GroundTruth`. A student of a seqkd teacher
speaks the teacher's tokenizer (hypotheses are token ids), so the labels' tokenizer is the run's.
A teacher of another vocabulary (Whisper) leaves its tokenizer.json, which no seqkd model speaks:
its student learns its recipe's own sentencepiece model from the hypotheses' normalised text (no
transcript read) and trains on that text re-tokenised; sequence-level KD works unchanged, and
word- and frame-level KD, which compare distributions over the teacher's vocabulary, are refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from common.corpora.manifest import shard_paths
from common.kd import KDConfig, sequence_kd_loss
from common.labels import HYP_TEXT, HYPS, INDEX as LABELS_INDEX, TOKENIZER as LABELS_TOKENIZER
from common.tokenizer import Tokenizer
from common.text import target_text
from trainer.data import Batch, PseudoLabels, bucketed, expanded
from trainer.objective import Objective
from trainer.recipe import Recipe
from trainer.run import RunError, RunPaths, train


@dataclass(frozen=True)
class SequenceKD(KDConfig, Objective):
    """The KD objective: its settings are `common.kd.KDConfig`'s (this is one, so a recipe's `kd:`
    section, the flags and the bundle meta name the same fields); it adds the batches (`expand`:
    each hypothesis its own example) and the loss over a batch's rows."""

    @classmethod
    def of(cls, kd: KDConfig) -> "SequenceKD":
        return kd if isinstance(kd, cls) else cls(**asdict(kd))

    def batches(self, pools, max_frames: int, n_mels: int, rng) -> Iterator[Batch]:
        return (expanded if self.expand else bucketed)(pools, max_frames, n_mels, rng)

    def targets(self, batch: Batch) -> tuple[list[list[list[int]]], list[list[float]], list[list[int]],
                                             list]:
        """Per utterance: its target token lists, their weights (summing to 1), its CTC target;
        and per target row, the teacher's top-M along it (None for a transcript row)."""
        if batch.hyps is None or batch.hyp_logps is None:
            raise ValueError("sequence-level KD needs pseudo-labelled rows (hyp_tokens, hyp_logp)")
        if self.word_kd and batch.hyp_topm is None:
            raise ValueError("word-level KD needs the teacher's top-M in the rows (PseudoLabels.soft)")
        return self.assemble(batch.hyps, batch.hyp_logps, batch.targets, batch.hyp_topm)

    def loss(self, model: torch.nn.Module, feats: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        hyps, weights, ctc, soft = self.targets(batch)
        if self.frame_kd and batch.ctc_topm is None:
            raise ValueError("frame-level KD needs the teacher's CTC top-M in the rows (PseudoLabels.soft)")
        words, frames = self.distributions(soft, max(len(t) for h in hyps for t in h) + 1, batch.ctc_topm,
                                           feats.device)
        out = sequence_kd_loss(model, feats, batch.lens.to(feats.device), hyps, weights, ctc, words, frames)
        tokens = sum(w * (len(t) + 1) for ts, ws in zip(hyps, weights) for t, w in zip(ts, ws))
        return {**out, "att_per_token": out["att"] * len(hyps) / tokens,
                "targets_per_utt": torch.tensor(sum(map(len, hyps)) / len(hyps))}


@dataclass(frozen=True)
class Labels:
    """A directory of pseudo-label shards, checked: who labelled it, with which tokenizer
    (None for a teacher of another vocabulary, whose tokenizer file is `tokenizer_file`)."""

    path: Path
    teacher_id: str
    decode: dict
    tokenizer: Tokenizer | None
    kind: str = "seqkd"
    tokenizer_file: bytes = b""

    @property
    def foreign_vocabulary(self) -> bool:
        return self.tokenizer is None


def open_labels(path: str | Path) -> Labels:
    """Check a labels directory before any work starts; every refusal says what to do."""
    path = Path(path)
    index_path = path / LABELS_INDEX
    shards = shard_paths(path)
    if not index_path.exists():
        raise RunError(f"{path} has no {LABELS_INDEX}: these are not pseudo labels "
                       f"(make them with `seqkd label TEACHER --data ... --out {path}`)")
    missing = [s.name for s in shards if HYPS not in pq.read_schema(s).names]
    if missing:
        raise RunError(f"{path}: shard {missing[0]} has no `hyps` column: not pseudo labels "
                       f"(make them with `seqkd label`)")
    index = json.loads(index_path.read_text())
    tok_path = path / index.get("tokenizer", LABELS_TOKENIZER)
    if not tok_path.exists() or "tokenizer_sha256" not in index:
        raise RunError(f"{path}: the labels do not record the teacher's tokenizer; "
                       f"label again with this version of `seqkd label`")
    proto = tok_path.read_bytes()
    if hashlib.sha256(proto).hexdigest() != index["tokenizer_sha256"]:
        raise RunError(f"{tok_path} is not the tokenizer the labels were made with "
                       f"(its sha256 differs from {LABELS_INDEX})")
    own = tok_path.name == LABELS_TOKENIZER
    return Labels(path, index["teacher_id"], index["decode"], Tokenizer(proto) if own else None,
                  index.get("teacher_kind", "seqkd"), proto)


def check_tokenizer(labels: Labels, recipe: Recipe, run_dir: Path) -> None:
    """The student's token ids must mean what the teacher's do: it uses the teacher's tokenizer,
    which must be one the student's recipe describes (same kind, no more tokens than it allows)."""
    teacher, wanted = labels.tokenizer, recipe.tokenizer
    if teacher is None:   # a teacher of another vocabulary: the student's own, made by `distill`
        return
    if teacher.model_type != wanted.model_type or teacher.vocab_size > wanted.vocab_size:
        raise RunError(
            f"the student recipe asks for a {wanted.model_type} tokenizer of <= {wanted.vocab_size} "
            f"tokens, but the labels in {labels.path} were made by teacher {labels.teacher_id} with a "
            f"{teacher.model_type} tokenizer of {teacher.vocab_size}: a student must use its teacher's "
            f"tokenizer (set tokenizer: {{model_type: {teacher.model_type}, vocab_size: "
            f"{teacher.vocab_size}}} in the recipe)")
    own = RunPaths(run_dir).frontend / "tokenizer.model"
    if own.exists() and own.read_bytes() != teacher.proto:
        raise RunError(f"{run_dir} was started with another tokenizer than the one of the labels in "
                       f"{labels.path}: resume with the same labels, or choose a new --out")


def open_all(dirs: list[str | Path]) -> Labels:
    """Several label directories read as one training set (e.g. transcribed + untranscribed
    audio): they must come from one teacher, one tokenizer and one set of decode settings."""
    all_labels = [open_labels(d) for d in dirs]
    first = all_labels[0]
    for other in all_labels[1:]:
        if (other.teacher_id, other.decode, other.tokenizer_file) != \
                (first.teacher_id, first.decode, first.tokenizer_file):
            raise RunError(f"{other.path} and {first.path} were labelled by different teachers or "
                           f"settings: distil from one teacher's labels at a time")
    return first


def distill(recipe: Recipe, labels_dir: str | Path | list, dev_dir: str | Path | None, out: str | Path,
            pseudo: PseudoLabels, kd: KDConfig, resume: bool = False) -> dict[str, Any]:
    """Train `recipe` on the teacher's N-best in `labels_dir` (one directory or a list) with Ray
    Train; return the summary. `kd` is what decides the loss (the caller's merge of the recipe's
    `kd:` section and its flags): the run's recipe.yaml records it, the bundle meta's `kd` entry too."""
    if pseudo.k < 1:
        raise RunError(f"--k must be at least 1, not {pseudo.k}")
    dirs = list(labels_dir) if isinstance(labels_dir, (list, tuple)) else [labels_dir]
    labels = open_all(dirs)
    check_tokenizer(labels, recipe, Path(out))
    nbest = labels.decode.get("nbest")
    if nbest is not None and pseudo.k > nbest:
        raise RunError(f"--k {pseudo.k} asks for more hypotheses than the labels hold "
                       f"(labelled with nbest {nbest})")
    if kd.soft and labels.foreign_vocabulary:
        raise RunError(f"--word-kd / --frame-kd compare distributions over the teacher's vocabulary, "
                       f"and the labels in {labels.path} are by a {labels.kind} teacher of another "
                       f"one: use sequence-level KD (--k, --weights) for such labels")
    if kd.soft and not labels.decode.get("topm"):
        raise RunError(f"--word-kd / --frame-kd need the teacher's top-M distributions, and the labels "
                       f"in {labels.path} have none: label again with `seqkd label --topm 8`")
    pseudo = replace(pseudo, soft=kd.soft, retokenize=labels.foreign_vocabulary)
    tokenizer = labels.tokenizer
    if tokenizer is None and not (RunPaths(Path(out)).frontend / "tokenizer.model").exists():
        tokenizer = hypothesis_tokenizer(recipe, dirs, pseudo.k)
    meta = bundle_meta(labels, pseudo, kd)
    summary = train(replace(recipe, kd=KDConfig(**meta["kd"])), dirs, dev_dir, out, resume=resume,
                    objective=SequenceKD.of(kd), tokenizer=tokenizer, pseudo=pseudo, extra_meta=meta)
    return {**summary, **meta}


def bundle_meta(labels: Labels, pseudo: PseudoLabels, kd: KDConfig) -> dict[str, Any]:
    """What a KD student's meta.json says of its targets: the teacher, the labels' selection and
    the KD settings as one `kd` entry (`KDConfig.from_meta` reads it back)."""
    return {"targets": "kd", "teacher_id": labels.teacher_id, "k": pseudo.k, "max_wer": pseudo.max_wer,
            "kd": asdict(kd), "label_beam": labels.decode.get("beam"), "teacher_kind": labels.kind}


def hypothesis_tokenizer(recipe: Recipe, dirs: list, k: int) -> Tokenizer:
    """The recipe's sentencepiece model learnt from the top-k hypotheses' normalised text: what a
    student of a teacher of another vocabulary trains on (no transcript is read)."""
    drop = recipe.data.remove_non_language
    texts = [target_text(h[HYP_TEXT], drop) for d in dirs for shard in shard_paths(d)
             for hyps in pq.read_table(shard, columns=[HYPS]).column(HYPS).to_pylist()
             for h in (hyps or [])[:k]]
    return Tokenizer.train(texts, recipe.tokenizer.vocab_size, recipe.tokenizer.model_type)
