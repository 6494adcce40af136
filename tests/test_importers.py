"""LibriSpeech and JSONL importers on generated audio, and their bad-input cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.corpora.manifest import iter_rows
from tests.audio_files import tone


def seqkd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqkd.cli", *args], capture_output=True,
                          text=True, timeout=300)


def _libri(root: Path) -> Path:
    base = root / "LibriSpeech"
    for subset, spk, chap, n in [("dev-clean", "84", "121123", 3), ("test-clean", "61", "70968", 2)]:
        d = base / subset / spk / chap
        d.mkdir(parents=True)
        lines = []
        for i in range(n):
            utt = f"{spk}-{chap}-{i:04d}"
            sf.write(d / f"{utt}.flac", tone(0.5 + 0.25 * i, 16000, 300 + 50 * i), 16000)
            lines.append(f"{utt} GO DO YOU HEAR NUMBER {i}")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return base


def test_librispeech(tmp_path):
    base = _libri(tmp_path)
    done = seqkd("prepare", "librispeech", str(base), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    rows = list(iter_rows(tmp_path / "out" / "dev-clean"))
    assert [r["utt_id"] for r in rows] == ["84-121123-0000", "84-121123-0001", "84-121123-0002"]
    assert [r["duration_s"] for r in rows] == pytest.approx([0.5, 0.75, 1.0])
    assert rows[2]["text"] == "GO DO YOU HEAR NUMBER 2" and rows[0]["speaker"] == "84"
    assert len(list(iter_rows(tmp_path / "out" / "test-clean"))) == 2


def _jsonl(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    return path


def test_jsonl_with_relative_paths_and_resampling(tmp_path):
    sf.write(tmp_path / "a.wav", tone(1.0, 8000), 8000)
    sf.write(tmp_path / "b.flac", np.stack([tone(0.5), tone(0.5)], 1), 16000)
    path = _jsonl(tmp_path, [{"audio_filepath": "a.wav", "text": "hello there", "speaker": "s1"},
                             {"audio_filepath": str(tmp_path / "b.flac"), "text": "general kenobi",
                              "duration": 0.5}])
    done = seqkd("prepare", "jsonl", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    rows = list(iter_rows(tmp_path / "out" / "train"))
    assert [(r["utt_id"], r["speaker"], r["text"]) for r in rows] == [
        ("a", "s1", "hello there"), ("b", "b", "general kenobi")]
    assert rows[0]["duration_s"] == pytest.approx(1.0) and rows[0]["sample_rate"] == 16000


@pytest.mark.parametrize("case,fragment", [
    ("missing file", "audio file not found"),
    ("bad audio", "utterance bad"),
    ("empty text", "empty transcript"),
    ("duplicate id", "duplicate utterance id: a"),
    ("no text key", "missing transcript"),
    ("not json", "expected a JSON object"),
])
def test_jsonl_bad_inputs_fail_cleanly_with_no_output(tmp_path, case, fragment):
    sf.write(tmp_path / "a.wav", tone(0.5), 16000)
    (tmp_path / "bad.wav").write_bytes(b"RIFF" + b"\0" * 60)
    good = {"audio_filepath": "a.wav", "text": "fine"}
    extra = {
        "missing file": {"audio_filepath": "nope.wav", "text": "x"},
        "bad audio": {"audio_filepath": "bad.wav", "text": "x"},
        "empty text": {"audio_filepath": "a.wav", "text": "  ", "utt_id": "a2"},
        "duplicate id": {"audio_filepath": "a.wav", "text": "again"},
        "no text key": {"audio_filepath": "a.wav", "utt_id": "a3"},
    }
    path = _jsonl(tmp_path, [good] + ([extra[case]] if case in extra else []))
    if case == "not json":
        path.write_text(path.read_text() + "{oops\n")
    done = seqkd("prepare", "jsonl", str(path), "--out", str(tmp_path / "out"), "--shard-size", "1")
    assert done.returncode == 2
    assert fragment in done.stderr and done.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out" / "train").exists()


def _kaldi_dir(tmp_path: Path, pipe: bool) -> Path:
    d = tmp_path / "dev"
    d.mkdir()
    sf.write(tmp_path / "rec1.wav", tone(2.0, 16000, 300), 16000)
    sf.write(tmp_path / "rec2.flac", tone(1.0, 8000, 500), 8000)
    rec2 = f"cat {tmp_path / 'rec2.flac'} |" if pipe else str(tmp_path / "rec2.flac")
    (d / "wav.scp").write_text(f"rec1 {tmp_path / 'rec1.wav'}\nrec2 {rec2}\n")
    (d / "segments").write_text("rec1-a rec1 0.0 0.5\nrec1-b rec1 0.5 1.75\nrec2-a rec2 0.25 1.0\n")
    (d / "text").write_text("rec1-a first words\nrec1-b second words\nrec2-a third\n")
    (d / "utt2spk").write_text("rec1-a spkA\nrec1-b spkA\nrec2-a spkB\n")
    return d


def test_kaldi_dir_with_segments_and_a_pipe(tmp_path):
    d = _kaldi_dir(tmp_path, pipe=True)
    refused = seqkd("prepare", "kaldi", str(d), "--out", str(tmp_path / "out"))
    assert refused.returncode == 2 and "pass --allow-pipes" in refused.stderr
    assert not (tmp_path / "out" / "dev").exists()
    done = seqkd("prepare", "kaldi", str(d), "--out", str(tmp_path / "out"), "--allow-pipes")
    assert done.returncode == 0, done.stderr
    rows = {r["utt_id"]: r for r in iter_rows(tmp_path / "out" / "dev")}
    assert {u: r["duration_s"] for u, r in rows.items()} == pytest.approx(
        {"rec1-a": 0.5, "rec1-b": 1.25, "rec2-a": 0.75})
    assert rows["rec2-a"]["speaker"] == "spkB" and rows["rec1-b"]["text"] == "second words"


@pytest.mark.parametrize("damage,fragment", [
    (lambda d: (d / "text").write_text("rec1-a first words\nrec1-b second words\n"), "missing transcript"),
    (lambda d: (d / "wav.scp").write_text("rec1 /nonexistent/x.wav\nrec2 /nonexistent/y.wav\n"), "not found"),
    (lambda d: (d / "segments").write_text("rec1-a rec9 0 1\n"), "recording rec9 is not in wav.scp"),
    (lambda d: (d / "segments").write_text("rec1-a rec1 0 9\n"), "outside its 2.00 s recording"),
    (lambda d: (d / "text").unlink(), "lacks text"),
])
def test_kaldi_bad_inputs(tmp_path, damage, fragment):
    d = _kaldi_dir(tmp_path, pipe=False)
    damage(d)
    done = seqkd("prepare", "kaldi", str(d), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and fragment in done.stderr, done.stderr
    assert not (tmp_path / "out" / "dev").exists()


def test_kaldi_failing_pipe_names_the_utterance(tmp_path):
    d = _kaldi_dir(tmp_path, pipe=False)
    (d / "wav.scp").write_text(f"rec1 {tmp_path / 'rec1.wav'}\nrec2 exit 3 |\n")
    done = seqkd("prepare", "kaldi", str(d), "--out", str(tmp_path / "out"), "--allow-pipes")
    assert done.returncode == 2 and "rec2-a: wav.scp command failed (exit 3)" in done.stderr
