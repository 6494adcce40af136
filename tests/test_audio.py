"""Audio loading: every container and rate we promise, and every AudioError case."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from common.audio import BLOCK_FRAMES, AudioError, AudioLimits, AudioTooLongError, load_audio
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


# Bounded decoding: small files holding hours of audio are refused without decoding them.

def silent_flac(seconds: float, rate: int = 16000) -> bytes:
    """`seconds` of silence as FLAC, written a minute at a time (3 h is about 0.5 MB)."""
    buf, total = io.BytesIO(), int(seconds * rate)
    with sf.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        minute = np.zeros(60 * rate, np.int16)
        for start in range(0, total, len(minute)):
            f.write(minute[:total - start])
    return buf.getvalue()


def flac_claiming(data: bytes, total_samples: int) -> bytes:
    """`data` with STREAMINFO's 36-bit total_samples rewritten (0: unknown, as a streaming
    encoder leaves it)."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0   # STREAMINFO is the first block
    fields = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1) | total_samples
    return data[:18] + fields.to_bytes(8, "big") + data[26:]


def silent_ogg(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, 1, format="OGG", subtype="VORBIS") as f:
        for _ in range(int(seconds)):
            f.write(np.zeros(rate, np.float32))
    return buf.getvalue()


def silent_av(seconds: float, fmt: str, codec: str, frame_size: int, rate: int = 16000) -> bytes:
    """`seconds` of silence encoded by PyAV frame by frame: MP3 (libmp3lame), ADTS AAC."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as box:
        stream = box.add_stream(codec, rate=rate, layout="mono")
        silence = np.zeros((1, frame_size), np.float32)
        for i in range(int(seconds * rate) // frame_size):
            frame = av.AudioFrame.from_ndarray(silence, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i * frame_size
            for packet in stream.encode(frame):
                box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    return buf.getvalue()


def wav_claiming(pcm: np.ndarray, data_bytes: int, riff_bytes: int | None = None) -> bytes:
    """A 16 kHz 16-bit mono WAV of `pcm` whose RIFF and data sizes say what we like."""
    riff = (36 + data_bytes) & 0xFFFFFFFF if riff_bytes is None else riff_bytes
    header = _wav_header(data_bytes=0)
    header = header[:4] + struct.pack("<I", riff) + header[8:40] + struct.pack("<I", data_bytes)
    return header + pcm.astype("<i2").tobytes()


def sphere_claiming(data: bytes, sample_count: int) -> bytes:
    """A SPHERE file with its sample_count rewritten inside the same 1024-byte header."""
    head = data[:1024].split(b"\n")
    head = [f"sample_count -i {sample_count}".encode() if line.startswith(b"sample_count") else line
            for line in head]
    return b"\n".join(head)[:1024].ljust(1024, b" ") + data[1024:]


def refuse(data: bytes, max_s: float) -> tuple[AudioTooLongError, float, int]:
    """(the error, seconds taken, peak bytes allocated while refusing: numpy arrays included)."""
    tracemalloc.start()
    try:
        began = time.perf_counter()
        with pytest.raises(AudioTooLongError) as info:
            load_audio(data, AudioLimits(max_duration_s=max_s))
        elapsed = time.perf_counter() - began
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return info.value, elapsed, peak


MB = 1 << 20
LIMIT_S = 10.0


@pytest.fixture(scope="module")
def long_files() -> dict[str, bytes]:
    """Silent files far over LIMIT_S, each small on disk (the SPHERE file only says so)."""
    three_hours = silent_flac(3 * 3600)
    speech = sphere_shorten((tone(1.0) * 20000).astype(np.int16))
    minutes = np.zeros(16000 * 120, np.int16)
    return {
        "flac, 3 h": three_hours,
        "flac, 3 h, length unknown": flac_claiming(three_hours, 0),
        "ogg vorbis, 5 min": silent_ogg(300),
        "mp3, 5 min": silent_av(300, "mp3", "libmp3lame", 1152),
        "adts aac, 5 min": silent_av(300, "adts", "aac", 1024),
        "wav, streamed (size 0xFFFFFFFF), 2 min": wav_claiming(minutes, 0xFFFFFFFF, 0xFFFFFFFF),
        "wav, RIFF size 0, 2 min": wav_claiming(minutes, minutes.nbytes, 0),
        "sphere header claiming 3 h": sphere_claiming(speech, 3 * 3600 * 16000),
    }


# Exact lengths (FLAC/OGG STREAMINFO and granule, WAV sizes checked against the bytes, SPHERE
# sample_count) refuse before decoding; the rest are refused one block past the limit.
FROM_HEADER = {"flac, 3 h", "ogg vorbis, 5 min", "wav, streamed (size 0xFFFFFFFF), 2 min",
               "wav, RIFF size 0, 2 min", "sphere header claiming 3 h"}


@pytest.mark.parametrize("name", ["flac, 3 h", "flac, 3 h, length unknown", "ogg vorbis, 5 min",
                                  "mp3, 5 min", "adts aac, 5 min",
                                  "wav, streamed (size 0xFFFFFFFF), 2 min", "wav, RIFF size 0, 2 min",
                                  "sphere header claiming 3 h"])
def test_long_audio_is_refused_having_decoded_at_most_the_limit(long_files, name):
    data = long_files[name]
    assert len(data) < 4 * MB
    err, elapsed, peak = refuse(data, LIMIT_S)
    assert "the limit is 10 s" in str(err) and "\n" not in str(err)
    limit = LIMIT_S * 16000
    if name in FROM_HEADER:
        assert err.samples_decoded == 0 and "at least" not in str(err)
        assert elapsed < 1.0
    else:
        assert limit < err.samples_decoded <= limit + BLOCK_FRAMES, err.samples_decoded
    # a whole decode would allocate >= 7 MB (2 min), 19 MB (5 min) or 690 MB (3 h) of float32
    assert peak < 2 * MB + 12 * (limit + BLOCK_FRAMES), (name, peak)


def test_refusing_hours_of_flac_keeps_the_process_small(tmp_path, long_files):
    """The peak RSS of a fresh process (FFmpeg's and libsndfile's buffers included) barely moves
    while refusing 3 h FLACs with and without a recorded length and a 5 min AAC. Linux's VmHWM,
    reset after warming up: ru_maxrss would carry over pytest's own peak across exec."""
    paths = []
    for name in ("flac, 3 h", "flac, 3 h, length unknown", "adts aac, 5 min"):
        paths.append(str(tmp_path / f"{len(paths)}.bin"))
        Path(paths[-1]).write_bytes(long_files[name])
    script = textwrap.dedent("""
        import json, re, sys, time
        from common.audio import AudioLimits, AudioTooLongError, load_audio

        def peak() -> int:
            status = open("/proc/self/status").read()
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024

        load_audio(sys.argv[1])   # the decoders warmed up
        out = []
        for path in sys.argv[2:]:
            open("/proc/self/clear_refs", "w").write("5")   # peak := the current RSS
            base, began = peak(), time.perf_counter()
            try:
                load_audio(path, AudioLimits(max_duration_s=20))
            except AudioTooLongError as exc:
                out.append([str(exc), time.perf_counter() - began, peak() - base])
        print(json.dumps(out))
        """)
    warm = tmp_path / "warm.flac"
    warm.write_bytes(encode(tone(1.0), 16000, "FLAC", "PCM_16"))
    run = subprocess.run([sys.executable, "-c", script, str(warm), *paths], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == 3, results
    for message, seconds, grown in results:
        assert "the limit is 20 s" in message
        assert grown < 32 * MB, (message, grown)   # a whole 3 h decode is >= 690 MB


@pytest.fixture(scope="module")
def normal_files() -> dict[str, bytes]:
    five = tone(5.0, 16000)    # longer than a block: decoded in several
    stereo = np.stack([tone(5.0, 44100), -0.5 * tone(5.0, 44100, 220.0)], axis=1)
    return {
        "wav 16 kHz": encode(five, 16000, "WAV", "PCM_16"),
        "wav 44.1 kHz stereo": encode(stereo, 44100, "WAV", "PCM_16"),
        "wav float 22.05 kHz": encode(tone(5.0, 22050), 22050, "WAV", "FLOAT"),
        "flac": encode(five, 16000, "FLAC", "PCM_16"),
        "flac 44.1 kHz stereo": encode(stereo, 44100, "FLAC", "PCM_24"),
        "ogg": encode(five, 16000, "OGG", "VORBIS"),
        "mp3": encode(five, 16000, "MP3"),
        "adts aac": silent_av(5.0, "adts", "aac", 1024),
    }


def _whole_file_decode(data: bytes) -> torch.Tensor:
    """What load_audio did before decoding was bounded: everything at once, then mix down."""
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        samples = samples.mean(axis=1)
    except sf.LibsndfileError:
        with av.open(io.BytesIO(data)) as box:
            stream = box.streams.audio[0]
            rate = stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            frames = [out for frame in box.decode(stream) for out in resampler.resample(frame)]
            frames += resampler.resample(None)
            samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    wave = torch.from_numpy(np.ascontiguousarray(samples))
    return wave if rate == 16000 else AF.resample(wave, rate, 16000)


@pytest.mark.parametrize("name", ["wav 16 kHz", "wav 44.1 kHz stereo", "wav float 22.05 kHz", "flac",
                                  "flac 44.1 kHz stereo", "ogg", "mp3", "adts aac"])
def test_bounded_decoding_is_identical_to_decoding_at_once(normal_files, name):
    want = _whole_file_decode(normal_files[name])
    assert want.numel() > BLOCK_FRAMES
    got = load_audio(normal_files[name])
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_length_unknown_flac_decodes_identically_and_its_limit_is_exact():
    data = encode(tone(5.0), 16000, "FLAC", "PCM_16")
    hidden = flac_claiming(data, 0)
    assert sf.info(io.BytesIO(hidden)).frames > 10**15        # libsndfile: length unknown
    assert torch.equal(load_audio(hidden), load_audio(data))
    for audio in (data, hidden):                               # header and counting agree
        assert load_audio(audio, AudioLimits(max_duration_s=5.0)).numel() == 80000
        with pytest.raises(AudioTooLongError, match="the limit is 4.99 s"):
            load_audio(audio, AudioLimits(max_duration_s=4.99))


def test_a_wav_whose_header_lies_is_decoded_within_its_bounds():
    """A data chunk claiming 1 s followed by 5 min of samples is its 1 s (what libsndfile and the
    WAV format say), never the 5 min; a streamed WAV (sizes 0xFFFFFFFF) is what its bytes hold."""
    pcm = (np.tile(tone(1.0), 300) * 20000).astype(np.int16)
    one_second = encode(pcm[:16000].astype(np.float32) / 32768, 16000, "WAV", "PCM_16")
    lying = wav_claiming(pcm, 32000)
    assert torch.equal(load_audio(lying, AudioLimits(max_duration_s=2)), load_audio(one_second))
    streamed = wav_claiming(pcm[:16000 * 20], 0xFFFFFFFF, 0xFFFFFFFF)
    wave = load_audio(streamed, AudioLimits(max_duration_s=20))
    assert wave.numel() == 16000 * 20 and torch.equal(wave[:16000], load_audio(one_second))
    err, _, _ = refuse(streamed, 19.9)
    assert err.samples_decoded == 0 and "20.0 s long" in str(err)


def test_sphere_sample_count_truncates_and_bounds():
    pcm = (tone(1.0) * 20000).astype(np.int16)
    for data in (sphere_shorten(pcm), sphere_pcm(pcm)):
        assert load_audio(data, AudioLimits(max_duration_s=1.0)).numel() == 16000
        with pytest.raises(AudioTooLongError, match="1.0 s long; the limit is 0.5 s"):
            load_audio(data, AudioLimits(max_duration_s=0.5))
    short = load_audio(sphere_claiming(sphere_shorten(pcm), 8000), AudioLimits(max_duration_s=0.5))
    assert torch.equal(short, load_audio(sphere_shorten(pcm))[:8000])
