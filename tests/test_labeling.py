"""Ray Data labeling with real Ray: exactly once, resumable, refusing mixed teachers, surviving a kill."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from common.beam_search import BeamConfig
from common.corpora.manifest import iter_rows, shard_paths
from common.transcriber import Transcriber
from common.labels import LABEL_SCHEMA
from services.labeling import FAIL_ENV, LabelError, label

pytestmark = pytest.mark.slow
DECODE = BeamConfig(beam=4, nbest=3, ctc_weight=0.3)


@pytest.fixture(scope="module")
def labelled(ray_local, synth_corpus, tiny_bundle, tmp_path_factory):
    data = synth_corpus[0] / "train"
    out = tmp_path_factory.mktemp("labels") / "train"
    summary = label(tiny_bundle[0], data, out, DECODE, batch_size=4, concurrency=1, show_progress=False)
    return data, out, summary


def rows_by_id(directory: Path) -> dict[str, dict]:
    rows = list(iter_rows(directory))
    ids = [r["utt_id"] for r in rows]
    assert len(ids) == len(set(ids)), "an utterance appears twice"
    return {r["utt_id"]: r for r in rows}


def test_every_utterance_once_with_the_transcribers_nbest(labelled, tiny_bundle):
    data, out, summary = labelled
    source, labels = rows_by_id(data), rows_by_id(out)
    assert labels.keys() == source.keys() and summary.utterances == len(source) == 24
    assert [p.name for p in shard_paths(out)] == [p.name for p in shard_paths(data)]
    for p in shard_paths(out):   # one output shard per input shard, same utterances, same order
        assert pq.read_schema(p).equals(LABEL_SCHEMA, check_metadata=False)
        assert pq.read_table(p, columns=["utt_id"]).column(0).to_pylist() == \
            pq.read_table(data / p.name, columns=["utt_id"]).column(0).to_pylist()
    transcriber = Transcriber(tiny_bundle[0], device="cpu")
    ids = sorted(source)
    want = transcriber.transcribe([source[u]["audio"] for u in ids], DECODE)
    index = json.loads((out / "labels.json").read_text())
    for utt, t in zip(ids, want):
        row = labels[utt]
        assert {k: row[k] for k in ("speaker", "text", "audio", "duration_s")} == \
            {k: source[utt][k] for k in ("speaker", "text", "audio", "duration_s")}
        assert [h["tokens"] for h in row["hyps"]] == [n.tokens for n in t.nbest]
        assert [h["logp"] for h in row["hyps"]] == pytest.approx([n.logp for n in t.nbest], abs=1e-3)
        assert row["teacher_id"] == index["teacher_id"] == transcriber.bundle.bundle_id
        assert json.loads(row["decode"])["beam"] == 4
    assert index["shards"] == {p.name: pq.ParquetFile(p).metadata.num_rows for p in shard_paths(data)}
    assert summary.hours > 0 and summary.mean_hyp_tokens > 0 and summary.wer_1best is not None


def test_rerun_rewrites_nothing_and_redoes_a_partial_shard(labelled, tiny_bundle):
    data, out, _ = labelled
    before = {p.name: p.stat().st_mtime_ns for p in shard_paths(out)}
    again = label(tiny_bundle[0], data, out, DECODE, batch_size=4, show_progress=False)
    assert again.shards_skipped == 3 and again.utterances == 0
    assert {p.name: p.stat().st_mtime_ns for p in shard_paths(out)} == before
    # a run killed while writing shard 1: its temp file is left and the shard is missing
    shard1 = (out / "shard-00001.parquet").read_bytes()
    (out / "shard-00001.parquet").unlink()
    (out / ".shard-00001.parquet.abc123.tmp").write_bytes(shard1[:100])
    redo = label(tiny_bundle[0], data, out, DECODE, batch_size=4, show_progress=False)
    assert redo.shards_done == 1 and redo.shards_skipped == 2 and redo.utterances == 10
    assert not list(out.glob(".*.tmp"))
    after = {p.name: p.stat().st_mtime_ns for p in shard_paths(out)}
    assert {k: v for k, v in after.items() if k != "shard-00001.parquet"} == \
        {k: v for k, v in before.items() if k != "shard-00001.parquet"}
    assert len(rows_by_id(out)) == 24


def test_refuses_to_mix_teachers_or_settings(labelled, tiny_bundle, tmp_path):
    data, out, _ = labelled
    with pytest.raises(LabelError, match="decode settings"):
        label(tiny_bundle[0], data, out, BeamConfig(beam=2), show_progress=False)
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle[0], other)
    (other / "config.yaml").write_text((other / "config.yaml").read_text() + "\n# another teacher\n")
    with pytest.raises(LabelError, match="refusing to mix teachers"):
        label(other, data, out, DECODE, show_progress=False)
    with pytest.raises(LabelError, match="not found"):
        label(tmp_path / "missing", data, tmp_path / "o", DECODE, show_progress=False)


def test_a_killed_actor_loses_and_duplicates_nothing(ray_local, synth_corpus, tiny_bundle, tmp_path,
                                                      monkeypatch):
    data = synth_corpus[0] / "train"
    monkeypatch.setenv(FAIL_ENV, "2")
    summary = label(tiny_bundle[0], data, tmp_path / "out", DECODE, batch_size=4, concurrency=1,
                    show_progress=False)
    assert (tmp_path / "out" / ".fault_injected").read_text() == "2"
    labels = rows_by_id(tmp_path / "out")
    assert labels.keys() == rows_by_id(data).keys() and summary.utterances == 24
    assert all(r["hyps"] for r in labels.values())


def test_concurrency_that_would_starve_the_readers_is_refused(ray_local, synth_corpus, tiny_bundle, tmp_path):
    with pytest.raises(LabelError, match="use 1..1"):
        label(tiny_bundle[0], synth_corpus[0] / "train", tmp_path / "o", DECODE, concurrency=2,
              show_progress=False)
