"""The Asterisk IVR prompts: recordings of a person (Allison Smith) with transcripts, to test on.

Debian's `asterisk-core-sounds-en-g722` holds the prompts as 16 kHz G.722 streams (no header:
FFmpeg's `g722` demuxer reads them) and `asterisk-core-sounds-en` their transcripts, one
`path/without/extension: Text.` a line in `core-sounds-en.txt.gz` (CC-BY-SA-3.0, Digium).
Transcripts go through `common.text.spoken_form` like every corpus seqkd builds; entries that
only describe a sound ("[ascending tones]") are dropped, and so are transcripts with no sound
file. One speaker, one split: `recorded`.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from common.corpora.importers import SourceUtt
from common.corpora.manifest import ManifestError
from common.text import spoken_form

TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
SOUNDS = Path("/usr/share/asterisk/sounds/en")
SPLIT = "recorded"
PACKAGES = "asterisk-core-sounds-en asterisk-core-sounds-en-g722"


def read_transcripts(path: Path = TRANSCRIPTS) -> dict[str, str]:
    """{prompt: transcript as written}; a line without `: ` or with nothing after it fails naming it."""
    if not path.is_file():
        raise ManifestError(f"no Asterisk transcripts at {path} (Debian packages: {PACKAGES}; "
                            "`seqkd prepare asterisk` installs them when run as root)")
    opener = gzip.open if path.suffix == ".gz" else open
    out: dict[str, str] = {}
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip() or line.startswith(";"):   # blank, or a `;` comment
                continue
            key, sep, text = line.partition(":")
            if not sep or not key.strip() or " " in key.strip():
                raise ManifestError(f"{path}:{n}: not a `prompt: Text.` line: {line.strip()[:80]!r}")
            if not text.strip():
                raise ManifestError(f"{path}:{n}: empty transcript for prompt {key.strip()!r}")
            out[key.strip()] = text.strip()
    return out


def prompts(transcripts: Path = TRANSCRIPTS, sounds: Path = SOUNDS) -> tuple[list[SourceUtt], dict]:
    """The prompts with speech and a sound file, and counts of what was dropped and why."""
    if not sounds.is_dir():
        raise ManifestError(f"no Asterisk sounds at {sounds} (Debian packages: {PACKAGES})")
    out, dropped = [], {"sound_descriptions": 0, "no_audio": 0}
    for key, text in sorted(read_transcripts(transcripts).items()):
        spoken = spoken_form(text)
        if not spoken:
            dropped["sound_descriptions"] += 1
            continue
        audio = sounds / f"{key}.g722"
        if not audio.is_file():
            dropped["no_audio"] += 1
            continue
        out.append(SourceUtt(utt_id=f"asterisk-{key.replace('/', '-')}", speaker="asterisk-allison",
                             split=SPLIT, path=str(audio), text=spoken, container="g722"))
    return out, dropped
