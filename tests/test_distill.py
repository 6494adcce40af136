"""Sequence-level KD with real Ray: pseudo-label shards streamed into Ray Train, the checks on
labels and tokenizers, the hypothesis selection, and the report over teacher and students."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from common.beam_search import BeamConfig
from common.audio import load_audio
from common.bundle import bundle_id, load_bundle
from common.corpora.manifest import iter_rows
from services.labeling import label
from tests.test_trainer import TINY
from tests.test_word_kd import assert_top_m_matches, teacher_forced
from trainer.data import Batch, FrontEnd, PseudoLabels, featurize
from trainer.distill import SequenceKD, distill
from trainer.recipe import recipe_from_dict
from scoring.report import build_report, write_report
from trainer.run import RunError

pytestmark = pytest.mark.slow
DECODE = BeamConfig(beam=4, nbest=3, ctc_weight=0.3)


def student_recipe(vocab_size: int, model_type: str = "char", **optim):
    data = json.loads(json.dumps(TINY))
    data["tokenizer"] = {"model_type": model_type, "vocab_size": vocab_size}
    data["optim"].update({"max_steps": 6, "checkpoint_every": 100, **optim})
    return recipe_from_dict(data)


@pytest.fixture(scope="module")
def labels(ray_local, synth_corpus, tiny_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kd") / "labels"
    label(tiny_bundle[0], synth_corpus[0] / "train", out, DECODE, batch_size=4, show_progress=False)
    return out


@pytest.fixture(scope="module")
def soft_labels(ray_local, synth_corpus, tiny_bundle, tmp_path_factory) -> Path:
    """The same teacher's 2-best, with its top-4 distribution along every hypothesis."""
    out = tmp_path_factory.mktemp("kd") / "soft_labels"
    label(tiny_bundle[0], synth_corpus[0] / "train", out, replace(DECODE, nbest=2, topm=4), batch_size=4,
          show_progress=False)
    return out


@pytest.fixture(scope="module")
def kd_run(labels, synth_corpus, tiny_bundle, tmp_path_factory):
    teacher = load_bundle(tiny_bundle[0])
    out = tmp_path_factory.mktemp("kd") / "student_kd"
    summary = distill(student_recipe(teacher.tokenizer.vocab_size), labels, synth_corpus[0] / "dev", out,
                      PseudoLabels(k=3), SequenceKD(weights="score", temperature=2.0, gt_weight=0.25))
    return out, summary


def test_student_trains_on_the_teachers_nbest(kd_run, tiny_bundle):
    out, summary = kd_run
    teacher = load_bundle(tiny_bundle[0])
    student = load_bundle(out / "bundle")
    assert summary["steps"] == 6
    assert student.meta["targets"] == "kd" and student.meta["k"] == 3 \
        and student.meta["kd"]["gt_weight"] == 0.25
    assert student.meta["teacher_id"] == bundle_id(tiny_bundle[0])
    assert student.tokenizer.proto == teacher.tokenizer.proto   # the student speaks the teacher's ids
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [m for m in steps if m["kind"] == "train"]
    # the tiny teacher's 3-best plus the transcript (gt_weight > 0): more than one target each
    assert all(1.5 < m["targets_per_utt"] <= 4.0 for m in train_steps)
    assert all(m["loss"] > 0 for m in train_steps)
    assert any("dev_wer" in m for m in steps)


def test_refuses_a_student_with_another_tokenizer(labels, synth_corpus, tiny_bundle, tmp_path):
    vocab = load_bundle(tiny_bundle[0]).tokenizer.vocab_size
    for recipe in (student_recipe(vocab - 1), student_recipe(vocab + 50, model_type="unigram")):
        with pytest.raises(RunError, match="must use its teacher's tokenizer"):
            distill(recipe, labels, None, tmp_path / "run", PseudoLabels(), SequenceKD())
    assert not (tmp_path / "run").exists()


def test_refuses_manifests_without_hyps_and_k_beyond_the_nbest(labels, synth_corpus, tiny_bundle, tmp_path):
    recipe = student_recipe(load_bundle(tiny_bundle[0]).tokenizer.vocab_size)
    with pytest.raises(RunError, match="not pseudo labels"):
        distill(recipe, synth_corpus[0] / "train", None, tmp_path / "a", PseudoLabels(), SequenceKD())
    fake = tmp_path / "fake"
    shutil.copytree(synth_corpus[0] / "train", fake)
    shutil.copy(labels / "labels.json", fake / "labels.json")
    with pytest.raises(RunError, match="no `hyps` column"):
        distill(recipe, fake, None, tmp_path / "b", PseudoLabels(), SequenceKD())
    with pytest.raises(RunError, match="nbest 3"):
        distill(recipe, labels, None, tmp_path / "c", PseudoLabels(k=5), SequenceKD())


def test_featurize_keeps_the_top_k_and_untranscribed_rows(labels, tiny_bundle):
    table = pq.read_table(sorted(labels.glob("shard-*.parquet"))[0])
    texts = table.column("text").to_pylist()
    texts[0] = ""                                   # untranscribed audio: KD still learns from it
    hyps = table.column("hyps").to_pylist()
    hyps[1] = []                                    # unusable audio: nothing to learn
    table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts)) \
        .set_column(table.schema.get_field_index("hyps"), "hyps",
                    pa.array(hyps, type=table.column("hyps").type))
    bundle = load_bundle(tiny_bundle[0])
    cmvn = bundle.features.cmvn
    front = FrontEnd(bundle.tokenizer.proto, bundle.features.config, tuple(cmvn.mean.tolist()),
                     tuple(cmvn.std.tolist()))
    out = featurize(table, front, PseudoLabels(k=2))
    ids = out.column("utt_id").to_pylist()
    assert ids == [u for i, u in enumerate(table.column("utt_id").to_pylist()) if i != 1]
    assert out.column("tokens").to_pylist()[0] == []
    for utt, kept in zip(ids, out.column("hyp_tokens").to_pylist()):
        source = hyps[table.column("utt_id").to_pylist().index(utt)]
        assert kept == [h["tokens"] for h in source[:2]]


def test_max_wer_drops_hypotheses_far_from_the_transcript():
    hyps = [{"text": "the cat sat", "tokens": [1], "logp": -1.0},
            {"text": "a dog ran off", "tokens": [2], "logp": -2.0},
            {"text": "the cat sad", "tokens": [3], "logp": -3.0}]
    assert [h["tokens"] for h in PseudoLabels(k=3, max_wer=0.5).select("the cat sat", hyps)] == [[1], [3]]
    assert [h["tokens"] for h in PseudoLabels(k=2, max_wer=0.5).select("the cat sat", hyps)] == [[1]]
    assert len(PseudoLabels(k=3, max_wer=0.5).select("", hyps)) == 3     # no transcript: no filter


def test_kd_targets_mix_in_the_transcript_and_pick_the_ctc_target():
    batch = Batch(utt_ids=["a", "b"], texts=["x", ""], feats=None, lens=None, targets=[[7, 8], []],
                  hyps=[[[1], [2]], [[3]]], hyp_logps=[[-1.0, -3.0], [-2.0]])
    hyps, weights, ctc, soft = SequenceKD(gt_weight=0.4, ctc_target="transcript").targets(batch)
    assert hyps == [[[1], [2], [7, 8]], [[3]]]
    assert weights[0] == pytest.approx([0.3, 0.3, 0.4]) and weights[1] == [1.0]
    assert ctc == [[7, 8], [3]]                     # no transcript: the 1-best
    assert soft == [None, None, None, None]         # no top-M rows (and none for the transcript)
    _, weights, ctc, _ = SequenceKD(weights="score", temperature=1.0).targets(batch)
    assert weights[0][0] > weights[0][1] and sum(weights[0]) == pytest.approx(1.0)
    assert ctc == [[1], [3]]
    with pytest.raises(ValueError, match="gt_weight"):
        SequenceKD(gt_weight=1.5)


def test_report_table_roles_compression_and_cache(kd_run, tiny_bundle, synth_corpus, tmp_path):
    student = kd_run[0]
    cfg = BeamConfig(beam=2)
    recorded = synth_corpus[0] / "test_unseen_engine"      # stands in for recordings of people
    rows = build_report([tiny_bundle[0], student], synth_corpus[0] / "test", cfg, tmp_path,
                        recorded=recorded)
    by_role = {r.role: r for r in rows}
    assert set(by_role) == {"teacher", "kd"}       # the teacher is the one the KD student names
    teacher, kd = by_role["teacher"], by_role["kd"]
    assert teacher.params == load_bundle(tiny_bundle[0]).model.num_params()
    assert kd.compression == pytest.approx(teacher.params / kd.params)
    assert kd.targets.startswith("KD k=3") and teacher.targets == "GT"
    assert kd.rel_wer == pytest.approx((kd.wer - teacher.wer) / teacher.wer)
    evals = {r["utterances"]: r for r in (json.loads(p.read_text())
                                          for p in (tmp_path / "evals").glob("student_kd-*/result.json"))}
    result, heard = evals[6], evals[4]                      # test: 6 utterances, recorded: 4
    assert result["wer"] == kd.wer and result["params"] == kd.params
    assert (kd.recorded_wer, kd.recorded_cer) == (heard["wer"], heard["cer"])

    write_report(rows, tmp_path, "test")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in saved] == [r.name for r in rows]
    assert {"name", "role", "params", "compression", "wer", "cer"} <= saved[0].keys()
    md = (tmp_path / "report.md").read_text()
    assert f"{kd.params:,}" in md and f"{100 * kd.wer:.2f}" in md
    assert "| recorded WER % | recorded CER % |" in md and f"| {100 * kd.recorded_cer:.2f} |" in md
    assert saved[0]["recorded_wer"] is not None
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "evals").glob("*/result.json")}
    again = build_report([tiny_bundle[0], student], synth_corpus[0] / "test", cfg, tmp_path,
                         recorded=recorded)
    assert again == rows and stamps == {p: p.stat().st_mtime_ns for p in stamps}   # cached, not re-decoded


def test_stored_top_m_equals_the_teacher_forced_along_each_hypothesis(soft_labels, tiny_bundle):
    """What the labeling beam search stored (float16) is the teacher decoder's distribution."""
    teacher = load_bundle(tiny_bundle[0])
    assert json.loads((soft_labels / "labels.json").read_text())["decode"]["topm"] == 4
    rows = list(iter_rows(soft_labels))
    assert rows and all(len(r["hyps"]) == 2 for r in rows)
    for row in rows[:6]:
        feats = teacher.features(load_audio(row["audio"])).unsqueeze(0)
        for hyp in row["hyps"]:
            with torch.no_grad():
                ref = teacher_forced(teacher.model, feats, torch.tensor([feats.shape[1]]), hyp["tokens"])
            assert_top_m_matches(hyp["topm_ids"], hyp["topm_logp"], ref, tol=2e-2)
        with torch.no_grad():   # and the CTC head's top-M at every encoder frame
            enc, enc_lens = teacher.model.encode(feats, torch.tensor([feats.shape[1]]))
            ctc = teacher.model.ctc_log_probs(enc)[0, : int(enc_lens[0])]
        assert_top_m_matches(row["ctc_topm_ids"], row["ctc_topm_logp"], ctc, tol=2e-2)


def test_word_kd_and_expand_train_a_student(soft_labels, tiny_bundle, tmp_path):
    recipe = student_recipe(load_bundle(tiny_bundle[0]).tokenizer.vocab_size)
    summary = distill(recipe, soft_labels, None, tmp_path / "run", PseudoLabels(k=2),
                      SequenceKD(word_kd=0.5, kd_temperature=2.0, expand=True, frame_kd=0.5))
    meta = load_bundle(tmp_path / "run" / "bundle").meta
    assert summary["steps"] == 6 and meta["kd"]["word_kd"] == 0.5 and meta["kd"]["expand"] is True
    assert meta["kd"]["frame_kd"] == 0.5
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [m for m in steps if m["kind"] == "train"]
    assert train_steps and all(m["kl"] > 0 and m["frame_kl"] > 0 and m["targets_per_utt"] == 1.0
                               for m in train_steps)


def test_word_kd_refuses_labels_without_top_m(labels, tiny_bundle, tmp_path):
    recipe = student_recipe(load_bundle(tiny_bundle[0]).tokenizer.vocab_size)
    with pytest.raises(RunError, match="label again with `seqkd label --topm"):
        distill(recipe, labels, None, tmp_path / "run", PseudoLabels(k=2), SequenceKD(word_kd=1.0))
    with pytest.raises(RunError, match="--frame-kd need"):
        distill(recipe, labels, None, tmp_path / "run", PseudoLabels(k=2), SequenceKD(frame_kd=0.5))
    assert not (tmp_path / "run").exists()
