"""Transcript normalisation shared by importers, training targets and scoring."""

from __future__ import annotations

import re

NOISE = "<NOISE>"
# ESPnet's WSJ non-language symbols: kept in the shard's Kaldi text, removed for training
# targets and scoring when a recipe asks (`remove_non_language`).
WSJ_NON_LANGUAGE = ("<NOISE>", "<*IN*>", "<*MR.*>")

_DROP = [re.compile(p) for p in (r"^\[<\w+\]$", r"^\[\w+>\]$", r"\[\w+/\]$", r"\[/\w+]$")]
_NOISE = re.compile(r"\[\w+\]")
_VERBAL_DELETION = re.compile(r"^<([\w']+)>$")


def kaldi_wsj_normalise(text: str, noise_word: str = NOISE) -> str:
    """Kaldi's egs/wsj/s5/local/normalize_transcript.pl, rule for rule."""
    out = []
    for w in text.split():
        w = w.upper().replace("\\", "")
        if w == "%PERCENT":
            w = "PERCENT"
        elif w == ".POINT":
            w = "POINT"
        if any(p.search(w) for p in _DROP) or w in ("~", "."):
            continue  # door slams, phenomenon start/end, truncation, pauses
        if _NOISE.search(w):
            out.append(noise_word)
        elif (m := _VERBAL_DELETION.match(w)):
            out.append(m.group(1))  # a verbally deleted word is still spoken
        elif w == "--DASH":
            out.append("-DASH")
        else:
            out.append(w)
    return " ".join(out)


def remove_non_language(text: str, symbols: tuple[str, ...] = WSJ_NON_LANGUAGE) -> str:
    drop = set(symbols)
    return " ".join(w for w in text.split() if w not in drop)
