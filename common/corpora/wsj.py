"""WSJ0 + WSJ1 from the LDC discs, prepared as Kaldi's egs/wsj/s5/local/wsj_data_prep.sh does.

Sets (index files; `disc:path` entries, `;` comments):
  train_si84   wsj0 doc/indices/train/tr_s_wv1.ndx (speaker 401 excluded, as Kaldi does)
  train_si284  wsj1 doc/indices/si_tr_s.ndx + the si84 list (speaker 401 excluded)
  test_eval92  wsj0 doc/indices/test/nvp/si_et_20.ndx (entries lack the .wv1 suffix)
  test_dev93   wsj1 doc/indices/h1_p0.ndx
Transcripts come from `<first 6 chars of id>00.dot` files (`TEXT (uttid)` lines) and are
normalised by Kaldi's rules (`common.text.kaldi_wsj_normalise`). File names differ in case
between copies of the discs, so every lookup is case-insensitive.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from common.corpora.importers import SourceUtt
from common.corpora.manifest import ManifestError
from common.text import kaldi_wsj_normalise

SETS = {
    "train_si84": [("wsj0", "doc/indices/train/tr_s_wv1.ndx")],
    "train_si284": [("wsj1", "doc/indices/si_tr_s.ndx"), ("wsj0", "doc/indices/train/tr_s_wv1.ndx")],
    "test_eval92": [("wsj0", "doc/indices/test/nvp/si_et_20.ndx")],
    "test_dev93": [("wsj1", "doc/indices/h1_p0.ndx")],
}
EXCLUDED_SPEAKER = "401"  # Kaldi: grep -v -i 11-2.1/wsj0/si_tr_s/401
_DISC = re.compile(r"^\d+-\d+\.\d+$")
_NDX_LINE = re.compile(r"^([0-9_]+):\s*(\S+)$")
_DOT_LINE = re.compile(r"^(.*)\((\w{8})\)\s*$")


class WSJTree:
    """Every file under the disc folders of one or more WSJ copies, indexed case-insensitively."""

    def __init__(self, roots: list[Path]) -> None:
        self.discs: dict[str, Path] = {}
        for root in roots:
            if not root.is_dir():
                raise ManifestError(f"WSJ directory not found: {root}")
            for d in sorted(root.iterdir()):
                if d.is_dir() and _DISC.match(d.name):
                    self.discs[re.sub(r"[-.]", "_", d.name)] = d
        if not self.discs:
            raise ManifestError(f"no WSJ disc folders (like 11-1.1) under {', '.join(map(str, roots))}")
        self.files: dict[str, Path] = {}
        self.dots: dict[str, list[Path]] = {}
        for key, disc in self.discs.items():
            for dirpath, _, names in os.walk(disc):
                for name in names:
                    full = Path(dirpath) / name
                    rel = full.relative_to(disc).as_posix().lower()
                    self.files[f"{key}:{rel}"] = full
                    if name.lower().endswith(".dot"):
                        self.dots.setdefault(name.lower(), []).append(full)

    def find_index(self, corpus: str, rel: str) -> Path:
        """The first disc holding `corpus/rel` (the index discs are 11-13.1 and 13-34.1)."""
        want = f"{corpus}/{rel}".lower()
        for key in self.discs:
            path = self.files.get(f"{key}:{want}")
            if path:
                return path
        raise ManifestError(f"WSJ index file {want} not found on any disc (is the {corpus} disc missing?)")

    def resolve(self, disc_id: str, rel: str) -> Path | None:
        return self.files.get(f"{disc_id}:{rel.lower().lstrip('/')}")


def read_index(path: Path, add_suffix: bool = False) -> list[tuple[str, str]]:
    """(disc id, relative path) per entry, comments and blank lines skipped."""
    out = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        m = _NDX_LINE.match(line)
        if not m:
            raise ManifestError(f"{path}:{n}: not an index entry: {line[:60]}")
        disc, rel = m.group(1).replace("-", "_"), m.group(2)
        out.append((disc, rel + ".wv1" if add_suffix else rel))
    return out


def _transcripts(tree: WSJTree, audio: Path, cache: dict[Path, dict[str, str]]) -> dict[str, str]:
    utt = audio.stem.lower()
    name = f"{utt[:6]}00.dot"
    candidates = tree.dots.get(name, [])
    same_dir = [p for p in candidates if p.parent == audio.parent]
    dot = (same_dir or candidates or [None])[0]
    if dot is None:
        return {}
    if dot not in cache:
        table = {}
        for line in dot.read_text(errors="replace").splitlines():
            m = _DOT_LINE.match(line.strip())
            if m:
                table[m.group(2).lower()] = m.group(1).strip()
        cache[dot] = table
    return cache[dot]


def wsj_sets(wsj0: str | Path, wsj1: str | Path, allow_missing: bool = False,
             sets: list[str] | None = None) -> tuple[dict[str, list[SourceUtt]], list[str]]:
    """Utterances per Kaldi set name, and the warnings (missing items) when allowed."""
    tree = WSJTree([Path(wsj0), Path(wsj1)])
    out: dict[str, list[SourceUtt]] = {}
    warnings: list[str] = []
    dot_cache: dict[Path, dict[str, str]] = {}
    for name in sets or list(SETS):
        entries = []
        for corpus, rel in SETS[name]:
            entries += read_index(tree.find_index(corpus, rel), add_suffix=name == "test_eval92")
        utts: dict[str, SourceUtt] = {}
        for disc, rel in entries:
            if re.search(rf"(^|/)si_tr_s/{EXCLUDED_SPEAKER}/", rel.lower()):
                continue
            if not rel.lower().endswith(".wv1"):
                continue
            audio = tree.resolve(disc, rel)
            utt = Path(rel).stem.lower()
            problem = None
            if disc not in tree.discs:
                problem = f"{name}: utterance {utt}: disc {disc.replace('_', '-', 1).replace('_', '.')} is missing"
            elif audio is None:
                problem = f"{name}: utterance {utt}: audio {disc}:{rel} not found"
            else:
                text = _transcripts(tree, audio, dot_cache).get(utt)
                if text is None:
                    problem = f"{name}: utterance {utt}: no transcript in {utt[:6]}00.dot"
            if problem:
                if not allow_missing:
                    raise ManifestError(problem)
                warnings.append(problem)
                continue
            utts[utt] = SourceUtt(utt_id=utt, speaker=utt[:3], split=name, path=str(audio),
                                  text=kaldi_wsj_normalise(text))
        out[name] = [utts[u] for u in sorted(utts)]
    return out, warnings
