"""Audio in: any file or byte string -> float32 mono 16 kHz samples, or a one-line AudioError.

soundfile (libsndfile) reads WAV/FLAC/OGG exactly; PyAV (FFmpeg) reads everything else,
including MP3 and WSJ's shorten-coded NIST SPHERE. Every caller (training, labeling,
serving) goes through `load_audio`, so a file decodes identically everywhere.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from common import sphere

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """Audio that cannot be used; the message is one line a user can act on."""


class AudioTooLongError(AudioError):
    """Valid audio over the duration limit (a service answers 413, not 422)."""


@dataclass(frozen=True)
class AudioLimits:
    """Bounds on what we accept; the service tightens max_duration_s for uploads."""

    min_duration_s: float = 0.0
    max_duration_s: float = 3600.0


DEFAULT_LIMITS = AudioLimits()


def load_audio(source: str | Path | bytes, limits: AudioLimits = DEFAULT_LIMITS,
               sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode `source` (a path or the file's bytes) to a (T,) float32 tensor at `sample_rate`."""
    data = _read_bytes(source)
    if len(data) == 0:
        raise AudioError("empty audio: the file has 0 bytes")
    samples, rate = _decode(data)
    if rate <= 0:
        raise AudioError(f"invalid sample rate {rate} Hz in the audio header")
    if samples.ndim == 2:
        if samples.shape[1] == 0:
            raise AudioError("audio has 0 channels")
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise AudioError("zero-length audio: the file decodes to 0 samples")
    if not np.isfinite(samples).all():
        raise AudioError("audio contains NaN or infinite samples")
    duration = samples.size / rate
    if duration > limits.max_duration_s:
        raise AudioTooLongError(f"audio is {duration:.1f} s long; the limit is "
                                f"{limits.max_duration_s:g} s")
    if duration < limits.min_duration_s:
        raise AudioError(f"audio is {duration:.3f} s long; the minimum is {limits.min_duration_s:g} s")
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave


def encode_flac(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit mono FLAC bytes: the storage format of manifest shards."""
    buf = io.BytesIO()
    pcm = np.clip(wave.detach().cpu().numpy(), -1.0, 1.0)
    sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AudioError(f"audio file not found: {path}") from None
    except IsADirectoryError:
        raise AudioError(f"audio path is a directory: {path}") from None
    except OSError as exc:
        raise AudioError(f"cannot read audio file {path}: {exc.strerror}") from None


def _decode(data: bytes) -> tuple[np.ndarray, int]:
    """(samples (T,) or (T, C) float32, sample rate) by the first decoder that understands it."""
    if sphere.is_sphere(data):
        return _decode_sphere(data)
    riff_error = _check_riff(data)
    if riff_error:
        raise AudioError(riff_error)
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return samples, int(rate)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        pass
    return _decode_ffmpeg(data)


def _check_riff(data: bytes) -> str | None:
    """Reasons a WAV header is unusable that decoders would report obscurely or not at all."""
    if data[:4] != b"RIFF":
        return None
    if len(data) < 44 or data[8:12] != b"WAVE":
        return "truncated or malformed WAV header"
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = data[pos + 8:pos + 8 + size]
        if chunk == b"fmt ":
            if len(body) < 16:
                return "truncated WAV fmt chunk"
            channels = int.from_bytes(body[2:4], "little")
            rate = int.from_bytes(body[4:8], "little")
            if channels == 0:
                return "WAV header claims 0 channels"
            if rate == 0:
                return "WAV header claims a sample rate of 0 Hz"
        elif chunk == b"data":
            if pos + 8 + size > len(data) and size != 0xFFFFFFFF:
                return (f"WAV data chunk is cut short: header says {size} bytes, "
                        f"file holds {len(data) - pos - 8}")
            return None
        pos += 8 + size + (size & 1)
    return "WAV file has no data chunk"


def _decode_sphere(data: bytes) -> tuple[np.ndarray, int]:
    try:
        header = sphere.parse_header(data)
        payload = data[header.header_bytes:]
        if "shorten" in header.coding:
            stream = sphere.shorten_with_wav_header(payload, header)
            samples, rate = _decode_ffmpeg(stream, container="shn")
            count = header.sample_count
            return (samples[:count] if count else samples), header.sample_rate or rate
    except sphere.SphereError as exc:
        raise AudioError(f"unreadable NIST SPHERE file: {exc}") from None
    return _decode_ffmpeg(data, container="nistsphere")


def _decode_ffmpeg(data: bytes, container: str | None = None) -> tuple[np.ndarray, int]:
    try:
        with av.open(io.BytesIO(data), format=container, metadata_errors="ignore") as box:
            if not box.streams.audio:
                raise AudioError("no audio stream in the file")
            stream = box.streams.audio[0]
            rate = stream.codec_context.sample_rate or 0
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate) if rate else None
            chunks = []
            for frame in box.decode(stream):
                for out in (resampler.resample(frame) if resampler else [frame]):
                    chunks.append(out.to_ndarray().reshape(-1))
            if resampler:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (av.FFmpegError, ValueError, IndexError, OSError) as exc:
        raise AudioError(f"undecodable audio ({_short(exc)})") from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return samples.astype(np.float32, copy=False), int(rate)


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]

