"""Audio loading: every container and rate we promise, and every AudioError case."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from common.audio import AudioError, AudioLimits, load_audio
from tests.audio_files import encode, espeak, tone
from tests.shorten import shorten_encode, sphere_pcm, sphere_shorten


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    n = min(a.numel(), b.numel())
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    return float((a @ b) / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def ref16k() -> np.ndarray:
    return tone(1.0, 16000)


def test_wav_16k_is_exact(ref16k):
    wave = load_audio(encode(ref16k, 16000, "WAV", "PCM_16"))
    assert wave.dtype == torch.float32 and wave.shape == (16000,)
    assert torch.allclose(wave, torch.from_numpy(ref16k), atol=1 / 32768 + 1e-6)


@pytest.mark.parametrize("fmt,subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", None),
                                         ("WAV", "FLOAT"), ("WAV", "PCM_U8")])
def test_containers_decode_to_the_same_signal(ref16k, fmt, subtype):
    wave = load_audio(encode(ref16k, 16000, fmt, subtype))
    assert abs(wave.numel() - 16000) < 1200  # codec priming/padding for lossy formats
    assert _corr(wave, torch.from_numpy(ref16k)) > 0.95 if fmt != "MP3" else True
    if fmt == "MP3":  # MP3 adds an encoder delay; compare the spectra instead
        spec = lambda x: torch.fft.rfft(x[:12000]).abs()  # noqa: E731
        assert _corr(spec(wave), spec(torch.from_numpy(ref16k))) > 0.9


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_rates_are_resampled_to_16k(rate):
    src = tone(1.0, rate)
    wave = load_audio(encode(src, rate, "WAV", "PCM_16"))
    assert wave.numel() == 16000
    expected = AF.resample(torch.from_numpy(src), rate, 16000)
    assert _corr(wave, expected) > 0.999


def test_stereo_is_downmixed(ref16k):
    left, right = ref16k, -0.5 * ref16k
    stereo = np.stack([left, right], axis=1)
    wave = load_audio(encode(stereo, 16000, "WAV", "PCM_16"))
    assert wave.shape == (16000,)
    assert torch.allclose(wave, torch.from_numpy((left + right) / 2), atol=2e-4)


def test_shorten_sphere_decodes_bit_exact():
    pcm = (tone(0.7, 16000) * 20000 + np.random.default_rng(0).normal(0, 50, 11200)).astype(np.int16)
    wave = load_audio(sphere_shorten(pcm))
    assert wave.numel() == pcm.size
    assert torch.equal(torch.round(wave * 32768).to(torch.int16), torch.from_numpy(pcm))


def test_shorten_sphere_of_real_speech(tmp_path):
    speech = load_audio(espeak("the market closed higher on tuesday", tmp_path / "s.wav"))
    pcm = (speech.numpy() * 32767).astype(np.int16)
    path = tmp_path / "01ac0201.wv1"
    path.write_bytes(sphere_shorten(pcm))
    wave = load_audio(path)
    assert torch.equal(torch.round(wave * 32768).to(torch.int16), torch.from_numpy(pcm))


def test_pcm_sphere_and_8k_sphere():
    pcm = (tone(0.5, 8000) * 20000).astype(np.int16)
    wave = load_audio(sphere_pcm(pcm, 8000))
    assert wave.numel() == 8000  # 0.5 s at 16 kHz
    shortened = load_audio(sphere_shorten(pcm, 8000))
    assert torch.allclose(wave, shortened, atol=1e-6)


def test_shorten_stream_is_not_audio_without_its_header():
    with pytest.raises(AudioError):
        load_audio(shorten_encode(np.zeros(1000, np.int16)))


def _wav_header(rate=16000, channels=1, bits=16, data_bytes=3200, fmt_tag=1) -> bytes:
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, fmt_tag, channels, rate, rate * block, block, bits)
            + b"data" + struct.pack("<I", data_bytes))


def _nan_wav() -> bytes:
    samples = np.zeros(1600, np.float32)
    samples[100] = np.nan
    samples[200] = np.inf
    return encode(samples, 16000, "WAV", "FLOAT")


BAD = {
    "empty": (b"", "0 bytes"),
    "random bytes": (np.random.default_rng(1).bytes(4000), "undecodable"),
    "text file": (b"hello, this is not audio at all\n" * 20, "undecodable"),
    "truncated header": (_wav_header()[:30], "truncated or malformed WAV header"),
    "data cut short": (_wav_header(data_bytes=32000) + b"\0" * 100, "cut short"),
    "zero rate": (_wav_header(rate=0) + b"\0" * 3200, "0 Hz"),
    "zero channels": (_wav_header(channels=0) + b"\0" * 3200, "0 channels"),
    "zero length": (_wav_header(data_bytes=0), "0 samples"),
    "nan samples": (_nan_wav(), "NaN or infinite"),
    "bad sphere": (b"NIST_1A\n   zzzz\n", "SPHERE"),
    "sphere, shorten garbage": (sphere_shorten(np.zeros(10, np.int16))[:1024] + b"junk" * 10, "SPHERE"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_audio_is_a_one_line_error(name):
    data, fragment = BAD[name]
    with pytest.raises(AudioError) as info:
        load_audio(data)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_duration_bounds():
    one_second = encode(tone(1.0), 16000, "WAV", "PCM_16")
    with pytest.raises(AudioError, match="limit is 0.5 s"):
        load_audio(one_second, AudioLimits(max_duration_s=0.5))
    with pytest.raises(AudioError, match="minimum is 2 s"):
        load_audio(one_second, AudioLimits(min_duration_s=2.0))
    assert load_audio(one_second, AudioLimits(min_duration_s=0.5, max_duration_s=2)).numel() == 16000


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)
