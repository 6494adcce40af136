"""Transcript normalisation shared by importers, training targets and scoring."""

from __future__ import annotations

import functools
import re
import unicodedata

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


def target_text(text: str, drop_non_language: bool) -> str:
    """The transcript a model learns: whitespace-normalised, WSJ's noise symbols dropped."""
    return remove_non_language(text) if drop_non_language else " ".join(text.split())


# ------------------------------------------------------------------ spoken-form normaliser
# One rule set for every corpus seqkd builds (synth, asterisk) and every reference it scores
# against them: lower case, numbers and symbols as spoken words, no punctuation. `*` and `#`
# read as a telephone keypad's "star" and "pound" (the Asterisk prompts say them so).
_SYMBOLS = {"%": " percent ", "&": " and ", "+": " plus ", "@": " at ", "#": " pound ",
            "*": " star ", "=": " equals "}
_BRACKETED = re.compile(r"\[[^\]]*\]")                 # [sound descriptions]
_MONEY = re.compile(r"\$\s?(\d[\d,]*(?:\.\d+)?)")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_DIGIT_LETTER = re.compile(r"(?<=\d)(?=[^\W\d_])|(?<=[^\W\d_])(?=\d)")   # 3D -> 3 D
_NOT_A_WORD = re.compile(r"[^a-z' ]+")
_LONE_QUOTE = re.compile(r"(?<![a-z])'|'(?![a-z])")


def spoken_form(text: str) -> str:
    """`text` as a recogniser should write it: "Press 1, then #." -> "press one then pound".

    Numbers are read as cardinals the American way (1234 -> "one thousand two hundred thirty
    four", 28.8 -> "twenty eight point eight"), ordinals as ordinals (3rd -> "third"), "$5" as
    "five dollars"; letters lose their accents; apostrophes stay inside words (don't, party's).
    """
    from num2words import num2words

    def words(number: str, to: str = "cardinal") -> str:
        value = number.replace(",", "")
        spoken = num2words(float(value) if "." in value else int(value), lang="en", to=to)
        return " " + " ".join(w for w in re.split(r"[\s,-]+", spoken) if w != "and") + " "

    text = unicodedata.normalize("NFKD", _BRACKETED.sub(" ", text))
    text = "".join(c for c in text if not unicodedata.combining(c)).replace("\u2019", "'")
    text = _MONEY.sub(lambda m: words(m.group(1)) + "dollars ", text)
    text = _ORDINAL.sub(lambda m: words(m.group(1), "ordinal"), text)
    text = _DIGIT_LETTER.sub(" ", text)
    text = _NUMBER.sub(lambda m: words(m.group(0)), text)
    for symbol, word in _SYMBOLS.items():
        text = text.replace(symbol, word)
    text = _LONE_QUOTE.sub(" ", _NOT_A_WORD.sub(" ", text.lower()))
    return " ".join(text.split())


# ------------------------------------------------------------------ a recogniser's written text
_PARENTHESISED = re.compile(r"\([^)]*\)")              # Whisper's "(upbeat music)", "(laughs)"


def asr_spoken_form(text: str) -> str:
    """A recogniser's written output (Whisper's) in seqkd's spoken form, for its labels and WER.

    `spoken_form` plus three rules of the Open ASR Leaderboard's normaliser (the
    `whisper-normalizer` package's EnglishTextNormalizer): `(parenthesised)` sound descriptions
    are dropped like `[bracketed]` ones, its filler words (hmm, mm, mhm, mmm, uh, um) are dropped,
    and British spellings become American (its list of 1,739: colour -> color, honour -> honor).

    Its other rules are left out, because they break the corpus's conventions: it expands
    contractions (don't -> do not, and every 's to "is": "waldo's provider" -> "waldo is
    provider") and titles (mr -> mister), deletes # * + = & @ (which `spoken_form` reads as
    words), and writes numbers as digits, which `spoken_form` would read back wrongly
    ("nineteen ninety" -> 1990 -> "one thousand nine hundred ninety", "zero oh one" -> "one").
    """
    words = spoken_form(_PARENTHESISED.sub(" ", text))
    english = _leaderboard_normaliser()
    return english.standardize_spellings(re.sub(english.ignore_patterns, " ", words))


@functools.lru_cache(maxsize=1)
def _leaderboard_normaliser():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()
