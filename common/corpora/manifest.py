"""Manifest shards: Parquet files of utterances with their audio embedded as FLAC.

Contract (DESIGN.md): utt_id, speaker, split, duration_s, sample_rate, audio, text.
Shards are named `shard-NNNNN.parquet` and written atomically (temp file + rename), so a
shard that exists is complete and a re-run can skip it; `index.json` sums them up.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("utt_id", pa.string()), ("speaker", pa.string()), ("split", pa.string()),
    ("duration_s", pa.float64()), ("sample_rate", pa.int32()), ("audio", pa.binary()),
    ("text", pa.string()),
])
SHARD_GLOB = "shard-*.parquet"


class ManifestError(ValueError):
    """A manifest directory or row that breaks the contract."""


@dataclass
class Utterance:
    utt_id: str
    speaker: str
    split: str
    duration_s: float
    sample_rate: int
    audio: bytes
    text: str

    def row(self) -> dict:
        return self.__dict__.copy()


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def shard_paths(directory: str | Path) -> list[Path]:
    paths = sorted(Path(directory).glob(SHARD_GLOB))
    if not paths:
        raise ManifestError(f"no manifest shards ({SHARD_GLOB}) in {directory}")
    return paths


def write_shard(path: Path, rows: list[dict], schema: pa.Schema = SCHEMA) -> None:
    """Write all rows or nothing: a temp file in the same directory, then an atomic rename."""
    table = pa.Table.from_pylist(rows, schema=schema)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.chmod(tmp, 0o644)   # mkstemp makes it private; a shard is data for every worker
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def iter_rows(directory: str | Path, columns: list[str] | None = None) -> Iterator[dict]:
    for path in shard_paths(directory):
        yield from pq.read_table(path, columns=columns).to_pylist()


def read_table(directory: str | Path, columns: list[str] | None = None) -> pa.Table:
    return pa.concat_tables(pq.read_table(p, columns=columns) for p in shard_paths(directory))


def write_index(directory: str | Path) -> dict:
    """Counts, hours, speakers and vocabulary of a manifest directory, saved as index.json."""
    table = read_table(directory, ["utt_id", "speaker", "duration_s", "text"])
    texts = table.column("text").to_pylist()
    vocab = {w for t in texts for w in t.split()}
    index = {
        "utterances": table.num_rows,
        "hours": round(sum(table.column("duration_s").to_pylist()) / 3600, 4),
        "speakers": len(set(table.column("speaker").to_pylist())),
        "vocabulary": len(vocab),
        "shards": [p.name for p in shard_paths(directory)],
    }
    Path(directory, "index.json").write_text(json.dumps(index, indent=2))
    return index


def check_unique(ids: Iterable[str]) -> None:
    seen: set[str] = set()
    for utt in ids:
        if utt in seen:
            raise ManifestError(f"duplicate utterance id: {utt}")
        seen.add(utt)
