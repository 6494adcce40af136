"""General English for the built-in corpus: sentences of the King James Bible (public domain).

The read-news grammar knows about 1,300 words; recordings of people say far more. The text
comes from Debian's `bible-kjv` package (the KJV text, public domain; its `bible` program
prints it), so no download is needed: about 12,000 distinct words once normalised. Verses
are cut at sentence and clause punctuation and normalised by `common.text.spoken_form`.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

from common.corpora.voices import SynthError
from common.text import spoken_form

_VERSE = re.compile(r"^\s*(?:\S+\d+:)?\d+\s+(.*\S)\s*$")   # "Ge1:1 In the ..." or "  20 He which ..."
_CLAUSE = re.compile(r"[.;:?!]+")


@functools.lru_cache(maxsize=1)
def sentences(min_words: int = 3, max_words: int = 24) -> tuple[str, ...]:
    """Every distinct clause of the KJV with `min_words`..`max_words` words, in book order."""
    if shutil.which("bible") is None:
        raise SynthError("the KJV text is not installed (the Debian package bible-kjv; "
                         "`make test` / `make demo` install it)")
    done = subprocess.run(["bible", "-l", "100000"], input=b"Gen1:1-Rev22:21\n",
                          capture_output=True, timeout=120)
    if done.returncode != 0:
        raise SynthError(f"bible failed: {done.stderr.decode(errors='replace')[:200]}")
    out: dict[str, None] = {}
    for line in done.stdout.decode(errors="replace").splitlines():
        m = _VERSE.match(line)
        if not m:
            continue
        for clause in _CLAUSE.split(m.group(1)):
            text = spoken_form(clause)
            if min_words <= len(text.split()) <= max_words:
                out.setdefault(text)
    if len(out) < 1000:
        raise SynthError(f"the KJV text gave only {len(out)} sentences; is bible-kjv-text whole?")
    return tuple(out)
