"""WER/CER with error counts, via jiwer, over whole corpora (not averaged per utterance)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import jiwer


@dataclass
class ErrorRates:
    wer: float
    cer: float
    words: int
    substitutions: int
    deletions: int
    insertions: int
    chars: int
    char_errors: int

    def as_dict(self) -> dict:
        return asdict(self)


def error_rates(refs: list[str], hyps: list[str]) -> ErrorRates:
    """Corpus WER and CER. Empty references are skipped (jiwer cannot score them)."""
    pairs = [(r.strip(), h.strip()) for r, h in zip(refs, hyps, strict=True) if r.strip()]
    if not pairs:
        raise ValueError("no non-empty reference transcripts to score")
    r, h = [p[0] for p in pairs], [p[1] for p in pairs]
    words = jiwer.process_words(r, h)
    chars = jiwer.process_characters(r, h)
    n_words = words.hits + words.substitutions + words.deletions
    n_chars = chars.hits + chars.substitutions + chars.deletions
    return ErrorRates(
        wer=words.wer, cer=chars.cer, words=n_words, substitutions=words.substitutions,
        deletions=words.deletions, insertions=words.insertions, chars=n_chars,
        char_errors=chars.substitutions + chars.deletions + chars.insertions)


def utterance_wer(ref: str, hyp: str) -> float:
    """WER of one hypothesis against one transcript (inf-safe for an empty reference)."""
    if not ref.strip():
        return 0.0 if not hyp.strip() else float("inf")
    return jiwer.wer(ref, hyp if hyp.strip() else "")
