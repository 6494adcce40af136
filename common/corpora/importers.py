"""Importers for users' corpora: LibriSpeech and NeMo-style JSONL manifests.

Each importer lists its utterances first and checks what can be checked without decoding
(files present, transcripts non-empty, ids unique), so a broken corpus fails before any
audio is decoded; decoding errors later name the utterance. Output is all-or-nothing:
shards go to a hidden `.NAME.partial` directory that is renamed into place at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.audio import SAMPLE_RATE, AudioError, encode_flac, load_audio
from common.corpora.manifest import ManifestError, Utterance


@dataclass(frozen=True)
class SourceUtt:
    utt_id: str
    speaker: str
    split: str
    path: str
    text: str


def load_source(src: SourceUtt) -> Utterance:
    """Decode one source file into a manifest row (runs in a worker process)."""
    try:
        wave = load_audio(src.path)
    except AudioError as exc:
        raise ManifestError(f"utterance {src.utt_id} ({src.path}): {exc}") from None
    return Utterance(utt_id=src.utt_id, speaker=src.speaker, split=src.split,
                     duration_s=wave.numel() / SAMPLE_RATE, sample_rate=SAMPLE_RATE,
                     audio=encode_flac(wave), text=src.text)


def check_sources(sources: list[SourceUtt], allow_empty_text: bool = False) -> None:
    if not sources:
        raise ManifestError("no utterances found")
    seen: set[str] = set()
    for s in sources:
        if s.utt_id in seen:
            raise ManifestError(f"duplicate utterance id: {s.utt_id}")
        seen.add(s.utt_id)
        if not Path(s.path).is_file():
            raise ManifestError(f"utterance {s.utt_id}: audio file not found: {s.path}")
        if not allow_empty_text and not s.text.strip():
            raise ManifestError(f"utterance {s.utt_id}: empty transcript")


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
