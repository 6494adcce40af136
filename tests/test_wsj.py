"""`seqkd prepare wsj` on a miniature WSJ tree: the exact sets, ids, texts and durations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.corpora.manifest import iter_rows
from common.text import kaldi_wsj_normalise, remove_non_language
from tests.shorten import sphere_shorten

DOT_TEXT = {
    "011c0201": r"The [door_slam/] <and> \"QUOTE stocks [loud_breath] rose ~ .",
    "011c0202": r"%PERCENT .POINT --DASH [<door_slam] profit [phone_ring>] fell [/phone_ring]",
    "012c0201": "yields <*IN*> climbed",
    "401c0201": "speaker four oh one is excluded",
    "440c0201": "eval sentence [lip_smack] here",
    "4a0a0101": "wsj one training",
    "4k0c0301": "dev sentence",
}
EXPECTED_TEXT = {
    "011c0201": 'THE AND "QUOTE STOCKS <NOISE> ROSE',
    "011c0202": "PERCENT POINT -DASH PROFIT FELL",
    "012c0201": "YIELDS <*IN*> CLIMBED",
    "440c0201": "EVAL SENTENCE <NOISE> HERE",
    "4a0a0101": "WSJ ONE TRAINING",
    "4k0c0301": "DEV SENTENCE",
}
SAMPLES = {u: 4000 + 800 * i for i, u in enumerate(sorted(DOT_TEXT))}


def _audio(path: Path, utt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SAMPLES[utt])
    path.write_bytes(sphere_shorten((rng.normal(0, 3000, SAMPLES[utt])).astype(np.int16)))


def _dot(folder: Path, name: str, utts: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(f"{DOT_TEXT[u]} ({u})\n" for u in utts))


def build_tree(root: Path) -> tuple[Path, Path]:
    w0, w1 = root / "wsj0", root / "wsj1"
    d = w0 / "11-1.1/wsj0/si_tr_s/011"
    _audio(d / "011c0201.wv1", "011c0201")
    _audio(d / "011c0202.wv1", "011c0202")
    _audio(d / "011c0201.wv2", "011c0201")  # second microphone: never used
    _dot(d, "011C0200.DOT", ["011c0201", "011c0202"])  # upper-case name on this copy
    _audio(w0 / "11-2.1/wsj0/si_tr_s/401/401c0201.wv1", "401c0201")
    _dot(w0 / "11-2.1/wsj0/si_tr_s/401", "401c0200.dot", ["401c0201"])
    _audio(w0 / "11-2.1/wsj0/SI_TR_S/012/012C0201.WV1", "012c0201")
    _dot(w0 / "11-2.1/wsj0/SI_TR_S/012", "012c0200.dot", ["012c0201"])
    _audio(w0 / "11-14.1/wsj0/si_et_20/440/440c0201.wv1", "440c0201")
    _dot(w0 / "11-14.1/wsj0/si_et_20/440", "440c0200.dot", ["440c0201"])
    idx = w0 / "11-13.1/wsj0/doc/indices"
    (idx / "train").mkdir(parents=True)
    (idx / "train/tr_s_wv1.ndx").write_text(
        ";\n; Index for WSJ0 SI-84 training data\n;\n"
        "11_1_1:wsj0/si_tr_s/011/011c0201.wv1\n11_1_1:wsj0/si_tr_s/011/011c0202.wv1\n\n"
        "11_2_1:wsj0/si_tr_s/401/401c0201.wv1\n11_2_1:wsj0/si_tr_s/012/012c0201.wv1\n")
    (idx / "test/nvp").mkdir(parents=True)
    (idx / "test/nvp/si_et_20.ndx").write_text("; eval92\n11_14_1:wsj0/si_et_20/440/440c0201\n")
    _audio(w1 / "13-1.1/wsj1/si_tr_s/4a0/4a0a0101.wv1", "4a0a0101")
    _dot(w1 / "13-1.1/wsj1/si_tr_s/4a0", "4a0a0100.dot", ["4a0a0101"])
    _audio(w1 / "13-16.1/wsj1/si_dt_20/4k0/4k0c0301.wv1", "4k0c0301")
    _dot(w1 / "13-16.1/wsj1/si_dt_20/4k0", "4k0c0300.dot", ["4k0c0301"])
    idx1 = w1 / "13-34.1/wsj1/doc/indices"
    idx1.mkdir(parents=True)
    (idx1 / "si_tr_s.ndx").write_text("; wsj1 si_tr_s\n13_1_1:wsj1/si_tr_s/4a0/4a0a0101.wv1\n")
    (idx1 / "h1_p0.ndx").write_text("; dev93\n13_16_1:wsj1/si_dt_20/4k0/4k0c0301.wv1\n")
    return w0, w1


def seqkd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqkd.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_exact_sets_ids_texts_and_durations(tmp_path):
    w0, w1 = build_tree(tmp_path)
    done = seqkd("prepare", "wsj", "--wsj0", str(w0), "--wsj1", str(w1), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    expected = {
        "train_si84": ["011c0201", "011c0202", "012c0201"],
        "train_si284": ["011c0201", "011c0202", "012c0201", "4a0a0101"],
        "test_eval92": ["440c0201"],
        "test_dev93": ["4k0c0301"],
    }
    for name, ids in expected.items():
        rows = list(iter_rows(tmp_path / "out" / name))
        assert [r["utt_id"] for r in rows] == ids, name
        for r in rows:
            assert r["speaker"] == r["utt_id"][:3] and r["split"] == name
            assert r["text"] == EXPECTED_TEXT[r["utt_id"]]
            assert r["duration_s"] == pytest.approx(SAMPLES[r["utt_id"]] / 16000)


def test_normalisation_rules_and_non_language_removal():
    assert kaldi_wsj_normalise(DOT_TEXT["011c0202"]) == EXPECTED_TEXT["011c0202"]
    assert remove_non_language("YIELDS <*IN*> <NOISE> CLIMBED <*MR.*>") == "YIELDS CLIMBED"


@pytest.mark.parametrize("damage,fragment", [
    (lambda w0, w1: (w0 / "11-1.1/wsj0/si_tr_s/011/011c0202.wv1").unlink(),
     "utterance 011c0202: audio 11_1_1:wsj0/si_tr_s/011/011c0202.wv1 not found"),
    (lambda w0, w1: (w0 / "11-1.1/wsj0/si_tr_s/011/011C0200.DOT").write_text(
        f"{DOT_TEXT['011c0201']} (011c0201)\n"), "utterance 011c0202: no transcript in 011c0200.dot"),
    (lambda w0, w1: __import__("shutil").rmtree(w1 / "13-16.1"), "disc 13-16.1 is missing"),
    (lambda w0, w1: __import__("shutil").rmtree(w1 / "13-34.1"), "doc/indices/si_tr_s.ndx not found"),
])
def test_missing_pieces_are_named_and_nothing_is_written(tmp_path, damage, fragment):
    w0, w1 = build_tree(tmp_path)
    damage(w0, w1)
    out = tmp_path / "out"
    done = seqkd("prepare", "wsj", "--wsj0", str(w0), "--wsj1", str(w1), "--out", str(out))
    assert done.returncode == 2 and fragment in done.stderr, done.stderr
    assert not out.exists() or not any(p.name.startswith("t") for p in out.iterdir())


def test_allow_missing_warns_with_a_count(tmp_path):
    w0, w1 = build_tree(tmp_path)
    (w0 / "11-1.1/wsj0/si_tr_s/011/011c0202.wv1").unlink()
    done = seqkd("prepare", "wsj", "--wsj0", str(w0), "--wsj1", str(w1), "--out", str(tmp_path / "o"),
                 "--allow-missing", "--sets", "train_si84", "train_si284")
    assert done.returncode == 0, done.stderr
    assert "2 utterances skipped (--allow-missing)" in done.stderr
    assert [r["utt_id"] for r in iter_rows(tmp_path / "o" / "train_si84")] == ["011c0201", "012c0201"]
    assert not (tmp_path / "o" / "test_dev93").exists()
