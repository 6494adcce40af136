"""Importers for users' corpora: Kaldi data dirs, LibriSpeech and NeMo-style JSONL manifests.

Each importer lists its utterances first and checks what can be checked without decoding
(files present, transcripts non-empty, ids unique), so a broken corpus fails before any
audio is decoded; decoding errors later name the utterance. Output is all-or-nothing:
shards go to a hidden `.NAME.partial` directory that is renamed into place at the end.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from common.audio import SAMPLE_RATE, AudioError, encode_flac, load_audio
from common.corpora.manifest import ManifestError, Utterance


PIPE_TIMEOUT_S = 300


@dataclass(frozen=True)
class SourceUtt:
    utt_id: str
    speaker: str
    split: str
    path: str                  # a file, or with pipe=True a Kaldi `cmd |` command line
    text: str
    pipe: bool = False
    start: float = 0.0         # Kaldi segments: seconds into the recording
    end: float | None = None
    container: str | None = None   # FFmpeg's demuxer for a headerless stream (see load_audio)


def load_source(src: SourceUtt) -> Utterance:
    """Decode one source file into a manifest row (runs in a worker process)."""
    try:
        wave = load_audio(_run_pipe(src) if src.pipe else src.path, container=src.container)
    except AudioError as exc:
        raise ManifestError(f"utterance {src.utt_id} ({src.path}): {exc}") from None
    if src.start or src.end is not None:
        first = int(round(src.start * SAMPLE_RATE))
        last = wave.numel() if src.end is None else int(round(src.end * SAMPLE_RATE))
        if not 0 <= first < last <= wave.numel() + SAMPLE_RATE // 100:
            raise ManifestError(f"utterance {src.utt_id}: segment {src.start}-{src.end} s is outside "
                                f"its {wave.numel() / SAMPLE_RATE:.2f} s recording")
        wave = wave[first:last]
    return Utterance(utt_id=src.utt_id, speaker=src.speaker, split=src.split,
                     duration_s=wave.numel() / SAMPLE_RATE, sample_rate=SAMPLE_RATE,
                     audio=encode_flac(wave), text=src.text)


def _run_pipe(src: SourceUtt) -> bytes:
    """Run a wav.scp command (opted into with --allow-pipes) and return what it writes."""
    try:
        done = subprocess.run(["bash", "-o", "pipefail", "-c", src.path], capture_output=True,
                              timeout=PIPE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ManifestError(f"utterance {src.utt_id}: wav.scp command timed out") from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise ManifestError(f"utterance {src.utt_id}: wav.scp command failed "
                            f"(exit {done.returncode}): {err[-1] if err else ''}")
    return done.stdout


def check_sources(sources: list[SourceUtt], allow_empty_text: bool = False) -> None:
    if not sources:
        raise ManifestError("no utterances found")
    seen: set[str] = set()
    for s in sources:
        if s.utt_id in seen:
            raise ManifestError(f"duplicate utterance id: {s.utt_id}")
        seen.add(s.utt_id)
        if not s.pipe and not Path(s.path).is_file():
            raise ManifestError(f"utterance {s.utt_id}: audio file not found: {s.path}")
        if not allow_empty_text and not s.text.strip():
            raise ManifestError(f"utterance {s.utt_id}: empty transcript")


def _table(path: Path, required: bool = True) -> dict[str, str]:
    """Kaldi `key value...` file -> {key: value}; duplicate keys are an error."""
    if not path.is_file():
        if required:
            raise ManifestError(f"Kaldi data dir lacks {path.name}: {path}")
        return {}
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if key in out:
            raise ManifestError(f"{path}:{n}: duplicate key {key}")
        out[key] = value.strip()
    return out


def kaldi(data_dir: str | Path, split: str | None = None, allow_pipes: bool = False) -> list[SourceUtt]:
    """A Kaldi data dir: wav.scp, text, utt2spk, and optionally segments."""
    d = Path(data_dir)
    wavs, texts = _table(d / "wav.scp"), _table(d / "text")
    spk = _table(d / "utt2spk", required=False)
    segments = _table(d / "segments", required=False)
    units = ({u: v.split() for u, v in segments.items()} if segments
             else {u: [u, "0", "-1"] for u in wavs})
    out = []
    for utt, (rec, start, end, *_) in units.items():
        if rec not in wavs:
            raise ManifestError(f"utterance {utt}: recording {rec} is not in wav.scp")
        if utt not in texts:
            raise ManifestError(f"utterance {utt}: missing transcript in {d / 'text'}")
        entry = wavs[rec]
        pipe = entry.endswith("|")
        if pipe and not allow_pipes:
            raise ManifestError(f"wav.scp entry for {rec} is a command ('{entry[:60]}'); "
                                "pass --allow-pipes to run it")
        path = entry[:-1].strip() if pipe else (entry if Path(entry).is_absolute() else str(d / entry))
        out.append(SourceUtt(utt_id=utt, speaker=spk.get(utt, utt), split=split or d.name,
                             path=path, text=texts[utt], pipe=pipe, start=float(start),
                             end=None if float(end) < 0 else float(end)))
    return out


def librispeech(root: str | Path) -> list[SourceUtt]:
    """`LibriSpeech/<subset>/<speaker>/<chapter>/<spk>-<chap>.trans.txt` + `<id>.flac`."""
    root = Path(root)
    trans = sorted(root.glob("*/*/*.trans.txt")) or sorted(root.glob("*/*/*/*.trans.txt"))
    if not trans:
        raise ManifestError(f"no LibriSpeech .trans.txt files under {root}")
    out = []
    for t in trans:
        subset = t.parent.parent.parent.name
        for n, line in enumerate(t.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            if not text.strip():
                raise ManifestError(f"{t}:{n}: utterance {utt_id} has an empty transcript")
            out.append(SourceUtt(utt_id=utt_id, speaker=utt_id.split("-")[0], split=subset,
                                 path=str(t.parent / f"{utt_id}.flac"), text=text.strip()))
    return out


def jsonl(path: str | Path, split: str | None = None) -> list[SourceUtt]:
    """NeMo manifests: one JSON object per line with audio_filepath, text, optional speaker."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ManifestError(f"manifest file not found: {path}") from None
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            audio = obj["audio_filepath"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ManifestError(f"{path}:{n}: expected a JSON object with audio_filepath") from None
        text = obj.get("text")
        if not isinstance(text, str):
            raise ManifestError(f"{path}:{n}: missing transcript (text)")
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        utt_id = str(obj.get("utt_id") or audio_path.stem)
        out.append(SourceUtt(utt_id=utt_id, speaker=str(obj.get("speaker", utt_id)),
                             split=split or path.stem, path=str(audio_path), text=text.strip()))
    return out
