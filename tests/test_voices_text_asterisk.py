"""The corpus's engines, its text and normaliser, and the Asterisk recordings: real packages."""

from __future__ import annotations

import gzip
import os
import shutil

import pytest
import torch

from common.corpora import asterisk
from common.corpora.general_english import sentences
from common.corpora.manifest import ManifestError, iter_rows
from common.corpora.synth import (ENGINE_SHARES, HELD_OUT_VOICES, UNSEEN_ENGINE, UNSEEN_SPLIT, UNTRANSCRIBED,
                                  plan)
from common.corpora.voices import ENGINES, SynthError, Voice, engine_voices, speak
from common.text import spoken_form
from tests.conftest import seqkd

TEXT = "the quick brown fox jumps over the lazy dog"


def _voice(engine: str, speed: float = 1.0, pitch: float = 1.0) -> Voice:
    return Voice(engine, engine_voices(engine)[0].name, speed, pitch)


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_speaks_at_its_rate(engine):
    """Non-silent speech of a plausible length; a faster speaker is shorter by about its rate,
    and the pitch factor leaves the duration alone (the engine's rate control cancels it)."""
    base = speak(TEXT, _voice(engine))
    fast = speak(TEXT, _voice(engine, speed=1.15))
    high = speak(TEXT, _voice(engine, pitch=1.1))
    seconds = base.numel() / 16000
    assert base.dtype == torch.float32 and base.dim() == 1
    assert 1.5 < seconds < 6.0 and base.abs().max() > 0.1 and base.pow(2).mean().sqrt() > 0.01
    assert fast.numel() / base.numel() == pytest.approx(1 / 1.15, rel=0.12)
    assert high.numel() / base.numel() == pytest.approx(1.0, rel=0.12)
    assert not torch.equal(base[: high.numel()], high[: base.numel()])


def test_speakers_are_disjoint_and_the_unseen_engine_is_unseen():
    counts = {"train": 300, "dev": 40, "test": 60, UNSEEN_SPLIT: 10, UNTRANSCRIBED: 30}
    jobs = plan(counts, seed=11, max_words=6)
    speakers = {s: {j[3].speaker for j in jobs if j[0] == s} for s in counts}
    engines = {s: {j[3].engine for j in jobs if j[0] == s} for s in counts}
    for a in ("train", "dev", "test", UNSEEN_SPLIT):
        for b in ("train", "dev", "test", UNSEEN_SPLIT):
            assert a == b or not speakers[a] & speakers[b], (a, b)
    assert speakers[UNTRANSCRIBED] <= speakers["train"]
    assert engines["train"] == set(ENGINE_SHARES)          # train hears every training engine
    for split in ("dev", "test"):                          # the held-out splits, people's voices
        assert {(j[3].engine, j[3].name) for j in jobs if j[0] == split} == {
            (e, name) for e, names in HELD_OUT_VOICES.items() for name in names}
    assert engines[UNSEEN_SPLIT] == {UNSEEN_ENGINE} and UNSEEN_ENGINE not in engines["train"]
    assert all(1 <= len(j[2].split()) <= 6 and j[2] == spoken_form(j[2]) for j in jobs)


def test_general_english_has_the_words():
    text = sentences()
    vocab = {w for s in text for w in s.split()}
    assert len(vocab) >= 5000 and len(text) > 20000
    assert "in the beginning god created the heaven and the earth" in text
    assert all(s == spoken_form(s) for s in text[:2000])


@pytest.mark.parametrize("raw, spoken", [
    ("Please press 1, then #.", "please press one then pound"),
    ("a 28.8 kilobit modem", "a twenty eight point eight kilobit modem"),
    ("extension 1234", "extension one thousand two hundred thirty four"),
    ("the 3rd of $5,000", "the third of five thousand dollars"),
    ("100% & more", "one hundred percent and more"),
    ("press * to toggle", "press star to toggle"),
    ("3D Audio ENABLED", "three d audio enabled"),
    ("Waldo's \"premier\" 'provider'", "waldo's premier provider"),
    ("Café [ascending tones] -- ok...", "cafe ok"),
    ("[this is a simple beep tone]", ""),
])
def test_spoken_form(raw, spoken):
    assert spoken_form(raw) == spoken


def test_prepare_asterisk_on_the_real_package(tmp_path):
    done = seqkd("prepare", "asterisk", "--out", str(tmp_path), "--no-install")
    assert done.returncode == 0, done.stderr
    rows = {r["utt_id"]: r for r in iter_rows(tmp_path / "recorded")}
    assert len(rows) == 563 and "dropped 5 sound descriptions" in done.stdout
    assert rows["asterisk-agent-pass"]["text"] == "please enter your password followed by the pound key"
    assert rows["asterisk-digits-7"]["text"] == "seven"
    assert all(r["sample_rate"] == 16000 and r["text"] == spoken_form(r["text"]) and r["text"]
               for r in rows.values())
    assert 2.0 < rows["asterisk-agent-pass"]["duration_s"] < 5.0
    assert sum(r["duration_s"] for r in rows.values()) / 3600 == pytest.approx(0.42, abs=0.01)


def test_an_empty_transcript_line_is_named(tmp_path):
    bad = tmp_path / "t.txt.gz"
    with gzip.open(bad, "wt") as f:
        f.write("; a comment\nactivated: Activated.\nadded:   \n")
    with pytest.raises(ManifestError, match=r"t.txt.gz:3: empty transcript for prompt 'added'"):
        asterisk.read_transcripts(bad)


def test_a_missing_engine_is_one_clear_line(tmp_path):
    """With flite off PATH, `prepare synth` fails in one line that names it and how to get it."""
    path = tmp_path / "bin"
    path.mkdir()
    for tool in ("espeak-ng", "festival", "bible"):
        os.symlink(shutil.which(tool), path / tool)
    env_path = f"{path}:{os.path.dirname(os.path.realpath(shutil.which('python3')))}"
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "seqkd.cli", "prepare", "synth", "--out",
                           str(tmp_path / "D"), "--train", "8", "--dev", "2", "--test", "2",
                           "--test-unseen-engine", "0"], capture_output=True, text=True,
                          env={**os.environ, "PATH": env_path}, timeout=300)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("seqkd prepare synth: flite is not installed") and "flite" in last
    with pytest.raises(SynthError, match="unknown engine 'sam'"):
        engine_voices("sam")
