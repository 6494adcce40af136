"""The `seqkd` command line, run as a real subprocess."""

from __future__ import annotations

import json

from common.beam_search import BeamConfig
from common.transcriber import Transcriber
from tests.conftest import SENTENCES, seqkd

COMMANDS = ["prepare", "train", "transcribe", "evaluate", "serve", "label", "distill", "report", "export",
            "demo"]


def test_help_lists_every_command():
    out = seqkd("--help")
    assert out.returncode == 0
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ")
              and line.split()[0] in COMMANDS]
    assert listed == COMMANDS


def test_distill_refuses_a_manifest_that_is_not_pseudo_labels(synth_corpus, tmp_path):
    out = seqkd("distill", "--config", "conf/student_small.yaml", "--labels", str(synth_corpus[0] / "train"),
                "--out", str(tmp_path / "run"), "--num-cpus", "1")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "not pseudo labels" in out.stderr
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_local_ray_too_small_to_feed_its_worker(synth_corpus, tmp_path):
    """One CPU held by the worker leaves none for the featurising tasks: the run would wait for
    ever; it is refused in one line, before any Ray Train process starts."""
    data = synth_corpus[0]
    out = seqkd("train", "--config", "conf/student_small.yaml", "--train", str(data / "train"),
                "--out", str(tmp_path / "run"), "--num-cpus", "1", timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("seqkd train: this Ray has 1 CPUs and the run needs 2: 1 worker(s) x 1"), line
    assert "--num-cpus" in line and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_report_refuses_a_directory_that_is_not_a_bundle(synth_corpus, tmp_path):
    out = seqkd("report", str(tmp_path), "--test", str(synth_corpus[0] / "test"), "--out", str(tmp_path / "r"))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "not a model bundle" in out.stderr


def test_transcribe_text_and_json_match_the_library(tiny_bundle, speech_dir):
    path, _ = tiny_bundle
    files = [str(speech_dir / f"utt{i}.wav") for i in range(len(SENTENCES))]
    out = seqkd("transcribe", str(path), *files, "--beam", "4")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == SENTENCES

    out = seqkd("transcribe", str(path), *files, "--beam", "4", "--nbest", "2", "--json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    expected = Transcriber(path, device="cpu").transcribe(files, BeamConfig(beam=4, nbest=2))
    for row, want, f in zip(rows, expected, files):
        assert row["file"] == f and row["text"] == want.text
        assert [n["tokens"] for n in row["nbest"]] == [n.tokens for n in want.nbest]
        assert abs(row["nbest"][0]["logp"] - want.nbest[0].logp) < 1e-4
        assert row["duration_s"] > 0.5 and row["rtf"] > 0


def test_transcribe_reports_bad_files_and_keeps_going(tiny_bundle, speech_dir, tmp_path):
    path, _ = tiny_bundle
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF garbage")
    out = seqkd("transcribe", str(path), str(bad), str(speech_dir / "utt0.wav"))
    assert out.returncode == 1
    assert out.stdout.splitlines() == [SENTENCES[0]]
    assert "bad.wav" in out.stderr and "WAV header" in out.stderr


def test_transcribe_bad_bundle_and_options(tmp_path, speech_dir):
    out = seqkd("transcribe", str(tmp_path), str(speech_dir / "utt0.wav"))
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert f"{tmp_path} is not a teacher" in out.stderr and "model.safetensors" in out.stderr and "model.bin" in out.stderr
    out = seqkd("transcribe", str(tmp_path), "x.wav", "--beam", "2", "--nbest", "5")
    assert out.returncode == 2 and "nbest must be in 1..beam" in out.stderr
    out = seqkd("transcribe", str(tmp_path), "x.wav", "--ctc-window", "4")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "ctc_window windows the CTC prefix scores: it needs ctc_weight > 0" in out.stderr
