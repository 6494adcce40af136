"""Manifest shards: Parquet files of utterances with their audio embedded as FLAC.

Contract (DESIGN.md): utt_id, speaker, split, duration_s, sample_rate, audio, text.
Shards are named `shard-NNNNN.parquet` and written atomically (temp file + rename), so a
shard that exists is complete and a re-run can skip it; `index.json` sums them up.
`check_shards` is the one check every command runs before it reads a directory of shards.
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
INDEX = "index.json"


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
    Path(directory, INDEX).write_text(json.dumps(index, indent=2))
    return index


@dataclass(frozen=True)
class BadShard:
    """A shard that cannot be read, and why, in words a person can act on."""

    path: Path
    reason: str

    def line(self) -> str:
        return f"{self.path}: {self.reason}"


def check_shards(directory: str | Path, schema: pa.Schema = SCHEMA, index: str = INDEX,
                 fail_fast: bool = False) -> tuple[list[Path], list[BadShard]]:
    """(readable shards, bad shards with one reason each) of a directory, in name order.

    Bad: a file whose Parquet footer cannot be read (truncated, not Parquet), one without the
    columns of `schema` or with other types, and one that the directory's `index` lists but that
    is not on disk. Only footers are read, never the audio, so the whole check costs about a
    millisecond a shard; a page damaged inside an intact file is found only when it is read.
    Why: one damaged file among thousands must be named before a job starts, not end the job
    hours in with Arrow's message and no file name. `fail_fast` stops at the first bad shard."""
    directory = Path(directory)
    on_disk = {p.name: p for p in directory.glob(SHARD_GLOB)}
    listed = listed_shards(directory / index)
    if not on_disk and not listed:
        raise ManifestError(f"no manifest shards ({SHARD_GLOB}) in {directory}")
    good: list[Path] = []
    bad: list[BadShard] = []
    for name in sorted(on_disk.keys() | listed):
        path = on_disk.get(name)
        reason = f"listed in {index} but missing" if path is None else shard_problem(path, schema)
        if reason is None:
            good.append(path)
            continue
        bad.append(BadShard(directory / name, reason))
        if fail_fast:
            break
    return good, bad


def listed_shards(index: Path) -> set[str]:
    """The shard names an index file lists (index.json: a list; labels.json: a dict of counts)."""
    if not index.exists():
        return set()
    try:
        shards = json.loads(index.read_text()).get("shards", [])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as exc:
        raise ManifestError(f"{index} is not a JSON object of the shards ({exc}): restore it, or "
                            f"remove it to read the shards on disk as they are") from None
    return set(shards)


def shard_problem(path: Path, schema: pa.Schema) -> str | None:
    """Why the shard at `path` cannot be read as `schema` (extra columns are fine), or None."""
    try:
        found = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"not a readable Parquet file ({first})"
    missing = [f.name for f in schema if f.name not in found.names]
    if missing:
        return f"missing column(s) {', '.join(missing)} (it has {', '.join(found.names)})"
    wrong = [f"{f.name} is {found.field(f.name).type}, not {f.type}" for f in schema
             if not found.field(f.name).type.equals(f.type)]
    return f"wrong column type(s): {'; '.join(wrong)}" if wrong else None


def require_readable(directory: str | Path, schema: pa.Schema = SCHEMA, index: str = INDEX) -> list[Path]:
    """The shards of `directory`, or a ManifestError that names every bad one on its own line:
    for the commands (train, distill, evaluate) that must not start on part of their data."""
    good, bad = check_shards(directory, schema, index)
    if bad:
        raise ManifestError(f"{len(bad)} of {len(good) + len(bad)} shards in {directory} cannot be read; "
                            f"repair or restore them, then run again:\n"
                            + "\n".join(f"  {b.line()}" for b in bad))
    return good


def check_unique(ids: Iterable[str]) -> None:
    seen: set[str] = set()
    for utt in ids:
        if utt in seen:
            raise ManifestError(f"duplicate utterance id: {utt}")
        seen.add(utt)
