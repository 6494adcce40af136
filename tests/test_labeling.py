"""Ray Data labeling with real Ray: exactly once, resumable, refusing mixed teachers, surviving a kill."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from common.beam_search import BeamConfig
from common.corpora.manifest import iter_rows, shard_paths
from common.labels import LABEL_SCHEMA
from common.metrics import error_rates
from common.transcriber import Transcriber
from services.capacity import (AUTOSCALER_NAMESPACE, CLUSTER_CONFIG_KEY, actor_request, autoscaler_capacity,
                               warn_if_unsatisfiable)
from services.labeling import FAIL_ENV, LabelError, ShardAssembler, label, pool_bounds

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
        # float32 sums of ~100 token scores (|logp| ~ 300), batched with other neighbours: 1e-5 relative
        assert [h["logp"] for h in row["hyps"]] == pytest.approx([n.logp for n in t.nbest], rel=1e-5)
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


def test_a_setting_that_does_not_change_the_labels_leaves_them_resumable(labelled, tiny_bundle, tmp_path):
    """labels.json records LABEL_SETTINGS only, and a resume compares only those: a directory
    recorded by a version whose BeamConfig has one more field still resumes; a changed label
    setting still refuses."""
    from dataclasses import fields

    from common.labels import LABEL_SETTINGS

    assert set(LABEL_SETTINGS) <= {f.name for f in fields(BeamConfig)}
    data, out, _ = labelled
    copy = tmp_path / "labels"
    shutil.copytree(out, copy)
    index = json.loads((copy / "labels.json").read_text())
    assert set(index["decode"]) == set(LABEL_SETTINGS)
    index["decode"]["a_knob_of_another_version"] = 3
    (copy / "labels.json").write_text(json.dumps(index))
    (copy / "shard-00002.parquet").unlink()
    redo = label(tiny_bundle[0], data, copy, DECODE, batch_size=4, show_progress=False)
    assert redo.shards_done == 1 and redo.shards_skipped == 2 and len(rows_by_id(copy)) == 24
    with pytest.raises(LabelError, match="refusing to mix settings"):
        label(tiny_bundle[0], data, copy, replace(DECODE, length_penalty=0.5), show_progress=False)


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


def test_the_driver_holds_one_shard_of_labels_and_never_audio(ray_local, synth_corpus, tiny_bundle,
                                                              tmp_path, monkeypatch):
    """Labelers send ids and hypotheses only; a shard's labels are dropped once it is written,
    and the summary is the same as one computed from the written shards."""
    held, columns = [], set()
    add = ShardAssembler.add

    def spy(self, batch):
        columns.update(batch.column_names)
        add(self, batch)
        held.append(sum(len(ids) for ids in self.ids.values()))

    monkeypatch.setattr(ShardAssembler, "add", spy)
    out = tmp_path / "out"
    summary = label(tiny_bundle[0], synth_corpus[0] / "train", out, DECODE, batch_size=4,
                    concurrency=(1, 2), show_progress=False)
    assert columns == {"utt_id", "path", "hyps", "teacher_id", "ctc_topm_ids", "ctc_topm_logp"}
    assert held[-1] == 0 and max(held) < 10 + 4   # shards of 10: one shard and one batch at most
    rows = list(rows_by_id(out).values())
    scored = [r for r in rows if r["hyps"] and r["text"].strip()]
    want = error_rates([r["text"] for r in scored], [r["hyps"][0]["text"] for r in scored])
    assert summary.utterances == len(rows) == 24 and summary.unusable == 0
    assert summary.wer_1best == pytest.approx(want.wer)
    assert summary.hours == pytest.approx(sum(r["duration_s"] for r in rows) / 3600)
    assert summary.mean_hyp_tokens == pytest.approx(sum(len(r["hyps"][0]["tokens"]) for r in rows) / 24)


def test_pool_sizes_and_requests_nothing_can_hold(ray_local, caplog, monkeypatch):
    """No refusal from the cluster's size today: warnings only, for a pool that cannot be filled
    (this local Ray has 2 CPUs and no autoscaler; then a v2 autoscaler's node types are put where
    it publishes them, in the GCS, and read back as Ray's own reader reads them)."""
    import ray._private.state
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    assert pool_bounds(2) == (2, 2) and pool_bounds((1, 4)) == (1, 4)
    for bad in (0, (2, 1), (0, 3)):
        with pytest.raises(LabelError, match="1 <= MIN <= MAX"):
            pool_bounds(bad)
    cpu, gpu, labeler = actor_request(0, None), actor_request(1, None), actor_request(0, {"labeler": 1})
    assert actor_request(0.5, {"labeler": 1}) == {"CPU": 1.0, "GPU": 0.5, "labeler": 1}
    with caplog.at_level("WARNING", logger="services.capacity"):
        warn_if_unsatisfiable(cpu, (1, 2))
        warn_if_unsatisfiable(cpu, (1, 3))   # a third actor might fit a node yet to join
        assert not caplog.records
        warn_if_unsatisfiable(gpu, (1, 1))
        warn_if_unsatisfiable(cpu, (2, 2))
        config = autoscaler_pb2.ClusterConfig(node_group_configs=[autoscaler_pb2.NodeGroupConfig(
            name="labeler", resources={"CPU": 1, "labeler": 1}, min_count=0, max_count=1)])
        _internal_kv_put(CLUSTER_CONFIG_KEY, config.SerializeToString(), namespace=AUTOSCALER_NAMESPACE)
        try:
            assert ray._private.state.state.get_cluster_config() == config   # the key Ray Data reads
            assert autoscaler_capacity(labeler) == 1 and autoscaler_capacity(gpu) == 0
            warn_if_unsatisfiable(labeler, (1, 2))
            warn_if_unsatisfiable(gpu, (1, 1))
        finally:
            _internal_kv_del(CLUSTER_CONFIG_KEY, namespace=AUTOSCALER_NAMESPACE)
        assert autoscaler_capacity(labeler) is None
    assert [r.getMessage().split(" (")[0].split(":")[0] for r in caplog.records] == [
        "no node of this cluster can hold a labeling actor",
        "the 2 labeling actors the pool starts with take every CPU of this cluster's nodes and "
        "leave none to read the shards",
        "this cluster can ever hold 1 of the 2 labeling actors asked for",
        "no node of this cluster can hold a labeling actor"]


def test_a_weak_teacher_is_named_in_one_line(tiny_bundle, tmp_path):
    """The check reads the dev WER training left in the bundle's meta."""
    import json
    import shutil

    from services.labeling import weak_teacher

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[0], bundle)
    meta = json.loads((bundle / "meta.json").read_text())
    for dev_wer, expect in [(0.2, None), (0.5, None), (0.93, "93.0% WER on its dev set (over 50%)")]:
        (bundle / "meta.json").write_text(json.dumps({**meta, "dev_wer": dev_wer}))
        said = weak_teacher(bundle)
        assert said == expect if expect is None else (expect in said and "\n" not in said)
    assert weak_teacher(bundle, max_dev_wer=0.95) is None


def label_cli(*argv: str) -> int:
    """`seqkd label` in this process, on the session's Ray (connect() joins the Ray already up)."""
    from seqkd.cli import build_parser

    args = build_parser().parse_args(["label", *argv])
    return args.run(args)


def test_damaged_shards_are_named_skipped_and_labelled_after_a_repair(ray_local, synth_corpus, tiny_bundle,
                                                                      tmp_path, capsys):
    """A truncated shard, one with the wrong columns and one listed in index.json but missing: each
    named on its own line, the good shard labelled exactly once, the run non-zero; labels.json says
    what was skipped, and a re-run after restoring one labels only that one."""
    from seqkd.distill_cmd import check_data
    from tests.test_damaged_shards import REASONS, damage

    data, out = tmp_path / "D", tmp_path / "L"
    originals = damage(synth_corpus[0] / "train", data)
    opts = [str(tiny_bundle[0]), "--data", str(data), "--out", str(out), "--beam", "4", "--nbest", "3",
            "--batch-size", "4", "--topm", "0", "--json"]
    assert label_cli(*opts) == 1
    captured = capsys.readouterr()
    for name, words in REASONS.items():
        assert sum(f"not labelled: {data / name}: {words}" in line
                   for line in captured.err.splitlines()) == 1, captured.err
    summary = json.loads(captured.out)
    assert summary["shards_done"] == 1 and summary["utterances"] == 4
    assert sorted(summary["damaged"]) == [str(data / n) for n in REASONS]
    assert [p.name for p in shard_paths(out)] == ["shard-00002.parquet"]
    assert sorted(rows_by_id(out)) == sorted(pq.read_table(data / "shard-00002.parquet").column("utt_id").to_pylist())
    index = json.loads((out / "labels.json").read_text())
    assert index["shards"] == {"shard-00002.parquet": 4} and sorted(index["skipped"]) == sorted(REASONS)
    check_data([str(out)], None)   # distill trains on these, and says what it lacks
    warned = capsys.readouterr().err.splitlines()
    assert len(warned) == 3 and all("was not labelled" in line for line in warned)

    (data / "shard-00000.parquet").write_bytes(originals["shard-00000.parquet"])
    kept = (out / "shard-00002.parquet").stat().st_mtime_ns
    assert label_cli(*opts) == 1   # two still damaged
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards_done"] == 1 and summary["shards_skipped"] == 1 and summary["utterances"] == 10
    assert (out / "shard-00002.parquet").stat().st_mtime_ns == kept
    assert sorted(rows_by_id(out)) == sorted(u for n in ("shard-00000.parquet", "shard-00002.parquet")
                                             for u in pq.read_table(data / n).column("utt_id").to_pylist())
    assert sorted(json.loads((out / "labels.json").read_text())["skipped"]) == \
        ["shard-00001.parquet", "shard-00003.parquet"]


def test_fail_fast_stops_at_the_first_damaged_shard(synth_corpus, tiny_bundle, tmp_path, capsys):
    from tests.test_damaged_shards import REASONS, damage

    damage(synth_corpus[0] / "train", tmp_path / "D")
    assert label_cli(str(tiny_bundle[0]), "--data", str(tmp_path / "D"), "--out", str(tmp_path / "L"),
                     "--fail-fast") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "shard-00000.parquet: " + REASONS["shard-00000.parquet"] in err
    assert "--fail-fast: nothing labelled" in err and not (tmp_path / "L").exists()


class FakeReply:
    def __init__(self, outcome):
        self.outcome = outcome

    def result(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class FakeHandle:
    """A deployment handle whose replica answers from a script: per audio, a list of outcomes."""

    def __init__(self, script: dict[bytes, list]):
        self.script, self.calls = script, []
        self.decode = self

    def remote(self, audio, options):
        self.calls.append(audio)
        return FakeReply(self.script[audio].pop(0))


def test_the_serve_labeler_retries_refusals_with_backoff_and_gives_up_in_one_line(monkeypatch):
    """Refusals for load (ours, and Ray's BackPressureError) are sent again after at least the
    server's Retry-After; other errors are that utterance's answer; a fleet that stays busy fails
    the batch after the bounded attempts instead of writing empty labels."""
    from ray.serve.exceptions import BackPressureError

    from services.labeling import decode_all
    from services.overload import Backoff, Busy

    slept = []
    monkeypatch.setattr("services.labeling.time.sleep", slept.append)
    ok = {"nbest": [{"text": "a"}], "model": "m"}
    bad_audio = ValueError("unusable audio")
    handle = FakeHandle({b"1": [Busy("busy", 2.0), ok], b"2": [ok], b"3": [bad_audio],
                         b"4": [BackPressureError(3, 3), Busy("busy", 0.0), ok]})
    answers = decode_all(handle, [b"1", b"2", b"3", b"4"], {}, Backoff(attempts=4, first_s=0.1))
    assert answers == [ok, ok, bad_audio, ok]
    assert handle.calls == [b"1", b"2", b"3", b"4", b"1", b"4", b"4"]   # only the refused again
    assert len(slept) == 2 and slept[0] >= 2.0 and 0.1 <= slept[1] <= 0.2
    always = FakeHandle({b"x": [Busy("busy", 0.0)] * 3})
    with pytest.raises(LabelError, match="refused 1 of 1 utterances as busy 3 times"):
        decode_all(always, [b"x"], {}, Backoff(attempts=3, first_s=0.01))
    assert len(always.calls) == 3
