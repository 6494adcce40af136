"""`seqkd prepare synth`: real TTS audio (four engines) in contract-conforming, resumable shards."""

from __future__ import annotations

import json

import io

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from common.corpora.manifest import SCHEMA, iter_rows, shard_paths
from common.tokenizer import Tokenizer
from tests.conftest import SYNTH_ARGS, seqkd


@pytest.fixture(scope="module")
def corpus(synth_corpus):
    return synth_corpus


def test_shards_match_the_contract(corpus):
    out, _ = corpus
    speakers = {}
    ids = set()
    for split, n in [("train", 24), ("dev", 6), ("test", 6), ("test_unseen_engine", 4)]:
        paths = shard_paths(out / split)
        assert [p.name for p in paths] == [f"shard-{i:05d}.parquet" for i in range((n + 9) // 10)]
        for p in paths:
            assert pq.read_schema(p).remove_metadata().equals(SCHEMA)
        rows = list(iter_rows(out / split))
        assert len(rows) == n
        for r in rows:
            assert r["utt_id"] not in ids and r["split"] == split and r["text"].strip()
            ids.add(r["utt_id"])
            audio, rate = sf.read(io.BytesIO(r["audio"]), dtype="float32")
            info = sf.info(io.BytesIO(r["audio"]))
            assert (info.format, info.subtype, info.channels, rate) == ("FLAC", "PCM_16", 1, 16000)
            assert r["sample_rate"] == 16000
            assert r["duration_s"] == pytest.approx(len(audio) / 16000, abs=1e-6)
            assert 1.0 < r["duration_s"] < 20 and abs(audio).max() > 0.1
        speakers[split] = {r["speaker"] for r in rows}
        index = json.loads((out / split / "index.json").read_text())
        assert index["utterances"] == n and index["speakers"] == len(speakers[split])
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["dev"]
    assert not speakers["dev"] & speakers["test"]
    engines = {split: {s.split("-s")[0].split("-")[0] for s in spk} for split, spk in speakers.items()}
    assert engines["test_unseen_engine"] == {"piper"} and "piper" not in engines["train"]
    train_text = {r["text"] for r in iter_rows(out / "train", ["text"])}
    assert any(r["text"] not in train_text for r in iter_rows(out / "test", ["text"]))


def test_stats_match_index(corpus):
    out, stdout = corpus
    printed = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [p["split"] for p in printed] == ["train", "dev", "test", "test_unseen_engine"]
    for p in printed:
        index = json.loads((out / p["split"] / "index.json").read_text())
        assert {k: v for k, v in p.items() if k in index} == index
        assert p["hours"] > 0 and p["vocabulary"] > 20


def test_rerun_skips_finished_shards_and_is_deterministic(corpus, tmp_path):
    out, _ = corpus
    before = {p.name: p.read_bytes() for p in shard_paths(out / "train")}
    (out / "train" / "shard-00001.parquet").unlink()
    again = seqkd("prepare", "synth", "--out", str(out), *SYNTH_ARGS)
    assert again.returncode == 0, again.stderr
    assert "train: 24 utts" in again.stdout and "2 shards already done" in again.stdout
    after = {p.name: p.read_bytes() for p in shard_paths(out / "train")}
    assert after.keys() == before.keys()
    rows_a = pq.read_table(out / "train" / "shard-00001.parquet").to_pylist()
    assert [r["text"] for r in rows_a] == [r["text"] for r in
                                           pq.read_table(io.BytesIO(before["shard-00001.parquet"])).to_pylist()]
    assert not list((out / "train").glob(".*tmp"))


def test_tokenizer_from_manifest(corpus, tmp_path):
    out, _ = corpus
    model = tmp_path / "tok.model"
    done = seqkd("prepare", "tokenizer", "--manifest", str(out / "train"), "--vocab-size", "60",
                 "--model-type", "bpe", "--out", str(model))
    assert done.returncode == 0, done.stderr
    tok = Tokenizer.load(model)
    for r in iter_rows(out / "train", ["text"]):
        assert tok.decode(tok.encode(r["text"])) == r["text"]
    bad = seqkd("prepare", "tokenizer", "--manifest", str(tmp_path))
    assert bad.returncode == 2 and "no manifest shards" in bad.stderr


def test_untranscribed_pool_leaves_the_other_splits_unchanged():
    from common.corpora.synth import UNTRANSCRIBED, make_utterance, plan

    counts = {"train": 40, "dev": 8, "test": 8}
    base = plan(counts, seed=3, max_words=6)
    more = plan({**counts, UNTRANSCRIBED: 12}, seed=3, max_words=6)
    assert more[: len(base)] == base
    extra = more[len(base):]
    assert len(extra) == 12 and {j[0] for j in extra} == {UNTRANSCRIBED}
    train_voices = {j[3] for j in base if j[0] == "train"}
    assert {j[3] for j in extra} <= train_voices                       # the training speakers
    utt = make_utterance(*extra[0], seed=3)
    assert utt.text == "" and utt.duration_s > 0.3 and utt.split == UNTRANSCRIBED
