"""Damaged shards are named, one line each, by the one check every command runs before reading:
a truncated file, wrong columns or types, and a shard the index lists that is not on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.corpora.manifest import ManifestError, check_shards, require_readable
from seqkd.cli import build_parser

# What each damage of `damage()` must be called, in the words a person reads.
REASONS = {"shard-00000.parquet": "not a readable Parquet file (Parquet magic bytes not found in footer",
           "shard-00001.parquet": "missing column(s) audio",
           "shard-00003.parquet": "listed in index.json but missing"}


def damage(source: Path, dest: Path) -> dict[str, bytes]:
    """A copy of the 3-shard manifest `source` (10, 10, 4 utterances) with shard 0 cut to half its
    bytes, shard 1 rewritten with `audio` renamed, and a shard 3 listed in index.json but absent;
    shard 2 is intact. Returns the original bytes of the damaged shards, to restore them."""
    shutil.copytree(source, dest)
    originals = {name: (dest / name).read_bytes() for name in ("shard-00000.parquet", "shard-00001.parquet")}
    (dest / "shard-00000.parquet").write_bytes(originals["shard-00000.parquet"][: len(originals["shard-00000.parquet"]) // 2])
    table = pq.read_table(dest / "shard-00001.parquet")
    pq.write_table(table.rename_columns(["wav" if c == "audio" else c for c in table.column_names]),
                   dest / "shard-00001.parquet")
    index = json.loads((dest / "index.json").read_text())
    (dest / "index.json").write_text(json.dumps({**index, "shards": index["shards"] + ["shard-00003.parquet"]}))
    return originals


@pytest.fixture
def damaged(synth_corpus, tmp_path) -> Path:
    assert [p.name for p in sorted((synth_corpus[0] / "train").glob("shard-*"))] == \
        ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    damage(synth_corpus[0] / "train", tmp_path / "train")
    return tmp_path / "train"


def test_each_bad_shard_is_named_with_its_reason(damaged):
    good, bad = check_shards(damaged)
    assert [p.name for p in good] == ["shard-00002.parquet"]
    assert [b.path for b in bad] == [damaged / name for name in REASONS]
    for b, (name, words) in zip(bad, REASONS.items()):
        assert b.line().startswith(f"{damaged / name}: {words}") and "\n" not in b.line(), b.line()
    good, bad = check_shards(damaged, fail_fast=True)
    assert good == [] and [b.path.name for b in bad] == ["shard-00000.parquet"]


def test_wrong_types_empty_files_and_a_broken_index(synth_corpus, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(synth_corpus[0] / "train", data)
    table = pq.read_table(data / "shard-00001.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("sample_rate"), "sample_rate",
                                    table.column("sample_rate").cast(pa.int64())), data / "shard-00001.parquet")
    (data / "shard-00002.parquet").write_bytes(b"")
    _, bad = check_shards(data)
    assert [b.reason for b in bad] == ["wrong column type(s): sample_rate is int64, not int32",
                                       "not a readable Parquet file (Parquet file size is 0 bytes)"]
    (data / "index.json").write_text("{not json")
    with pytest.raises(ManifestError, match="index.json is not a JSON object"):
        check_shards(data)
    with pytest.raises(ManifestError, match="no manifest shards"):
        check_shards(tmp_path / "empty")


def test_require_readable_names_every_bad_shard_on_its_own_line(damaged, synth_corpus):
    with pytest.raises(ManifestError) as err:
        require_readable(damaged)
    lines = str(err.value).splitlines()
    assert lines[0] == f"3 of 4 shards in {damaged} cannot be read; repair or restore them, then run again:"
    assert [line.strip().split(": ")[0] for line in lines[1:]] == [str(damaged / n) for n in REASONS]
    assert require_readable(synth_corpus[0] / "dev")   # an intact directory: its shards


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def assert_names_every_bad_shard(stderr: str, command: str, directory: Path) -> None:
    lines = stderr.strip().splitlines()
    assert lines[0].startswith(f"seqkd {command}: 3 of 4 shards in {directory} cannot be read"), stderr
    for name, words in REASONS.items():
        assert sum(line.strip().startswith(f"{directory / name}: {words}") for line in lines) == 1, stderr


def test_train_and_evaluate_refuse_at_start_naming_every_bad_shard(damaged, synth_corpus, tiny_bundle,
                                                                   tmp_path, capsys):
    """Before Ray starts or a run directory is made: a run never dies hours in on a bad shard."""
    assert run(["train", "--config", "conf/student_small.yaml", "--train", str(damaged),
                "--out", str(tmp_path / "run")]) == 2
    assert_names_every_bad_shard(capsys.readouterr().err, "train", damaged)
    assert not (tmp_path / "run").exists()
    assert run(["train", "--config", "conf/student_small.yaml", "--train", str(synth_corpus[0] / "dev"),
                "--dev", str(damaged), "--out", str(tmp_path / "run")]) == 2
    assert_names_every_bad_shard(capsys.readouterr().err, "train", damaged)
    assert run(["evaluate", str(tiny_bundle[0]), "--data", str(damaged)]) == 2
    assert_names_every_bad_shard(capsys.readouterr().err, "evaluate", damaged)


def test_distill_refuses_damaged_label_shards_at_start(synth_corpus, tmp_path, capsys):
    """A labels directory (labels.json) is held to the label schema and to the shards labels.json
    lists; a manifest given as labels is still refused as "not pseudo labels" in one line."""
    labels = tmp_path / "L"
    shutil.copytree(synth_corpus[0] / "dev", labels)
    (labels / "labels.json").write_text(json.dumps({"shards": {"shard-00000.parquet": 6, "shard-00009.parquet": 10}}))
    assert run(["distill", "--config", "conf/student_small.yaml", "--labels", str(labels),
                "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"seqkd distill: 2 of 2 shards in {labels} cannot be read"), lines
    assert lines[1].strip().startswith(f"{labels / 'shard-00000.parquet'}: missing column(s) hyps, teacher_id")
    assert lines[2].strip() == f"{labels / 'shard-00009.parquet'}: listed in labels.json but missing"
    assert not (tmp_path / "run").exists()
