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


def utterance_errors(refs: list[str], hyps: list[str]) -> tuple[list[int], list[int]]:
    """Per utterance: word errors (S + D + I) and reference words, the units of a corpus WER."""
    errors, words = [], []
    for ref, hyp in zip(refs, hyps, strict=True):
        if not ref.strip():
            continue
        out = jiwer.process_words(ref, hyp if hyp.strip() else "")
        errors.append(out.substitutions + out.deletions + out.insertions)
        words.append(out.hits + out.substitutions + out.deletions)
    return errors, words


@dataclass
class Bootstrap:
    """A statistic over resampled utterances: its value, 95% interval and two-sided p-value."""

    value: float
    ci95: tuple[float, float]
    p_value: float          # 2 x the share of resamples on the far side of 0 (>= 1 / resamples)
    resamples: int


def bootstrap_wer(errors: list[int], words: list[int], other_errors: list[int] | None = None,
                  resamples: int = 2000, seed: int = 0) -> Bootstrap:
    """Paired bootstrap over utterances (Koehn 2004; Bisani & Ney 2004): the corpus WER of one
    system, or with `other_errors` (the same utterances, another system) the WER difference
    this - other, recomputed on `resamples` resamples of the utterances drawn with replacement."""
    import numpy as np

    e = np.asarray(errors, dtype=np.float64)
    n = np.asarray(words, dtype=np.float64)
    if other_errors is not None:
        if len(other_errors) != len(errors):
            raise ValueError("a paired bootstrap needs both systems' errors on the same utterances")
        e = e - np.asarray(other_errors, dtype=np.float64)
    if not len(e) or n.sum() == 0:
        raise ValueError("nothing to resample: no scored utterances")
    idx = np.random.default_rng(seed).integers(0, len(e), size=(resamples, len(e)))
    stats = e[idx].sum(1) / np.maximum(n[idx].sum(1), 1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    far = min(float((stats >= 0).mean()), float((stats <= 0).mean()))
    return Bootstrap(value=float(e.sum() / n.sum()), ci95=(float(lo), float(hi)),
                     p_value=min(1.0, max(2 * far, 1 / resamples)), resamples=resamples)
