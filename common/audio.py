"""Audio in: any file or byte string -> float32 mono 16 kHz samples, or a one-line AudioError.

soundfile (libsndfile) reads WAV/FLAC/OGG/MP3 exactly; PyAV (FFmpeg) reads everything else,
including WSJ's shorten-coded NIST SPHERE. Every caller (training, labeling, serving) goes
through `load_audio`, so a file decodes identically everywhere.

Decoding is bounded by the duration limit. A small compressed file can hold hours of audio
(a 0.5 MB FLAC of silence decodes to 3 h, 690 MB of float32), so a length is never learnt by
decoding everything first. A length the header states exactly is checked before any sample is
decoded, and libsndfile never reads past it; where there is none, or it may be an estimate
(MP3, anything FFmpeg reads), samples are decoded block by block and decoding stops as soon as
they pass the limit. A refusal costs at most the limit's worth of samples, whatever the header says.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from common import sphere

SAMPLE_RATE = 16000
BLOCK_FRAMES = 1 << 16          # frames per soundfile read of a length-less stream (4 s at 16 kHz)
_SF_UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's SF_COUNT_MAX: a stream that did not record its length


class AudioError(ValueError):
    """Audio that cannot be used; the message is one line a user can act on."""


class AudioTooLongError(AudioError):
    """Valid audio over the duration limit (a service answers 413, not 422).

    `samples_decoded` (per channel) is what refusing cost: 0 when the header gave the length
    away, otherwise more than the limit by at most one block or decoder frame."""

    def __init__(self, message: str, samples_decoded: int = 0) -> None:
        super().__init__(message)
        self.samples_decoded = samples_decoded


@dataclass(frozen=True)
class AudioLimits:
    """Bounds on what we accept; the service tightens max_duration_s for uploads."""

    min_duration_s: float = 0.0
    max_duration_s: float = 3600.0


DEFAULT_LIMITS = AudioLimits()


def load_audio(source: str | Path | bytes, limits: AudioLimits = DEFAULT_LIMITS,
               sample_rate: int = SAMPLE_RATE, container: str | None = None) -> torch.Tensor:
    """Decode `source` (a path or the file's bytes) to a (T,) float32 tensor at `sample_rate`.

    `container` names FFmpeg's demuxer for raw streams that carry no header to recognise them
    by (Asterisk's `.g722` prompts: "g722")."""
    data = _read_bytes(source)
    if len(data) == 0:
        raise AudioError("empty audio: the file has 0 bytes")
    if container:
        samples, rate = _decode_ffmpeg(data, limits.max_duration_s, container=container)
    else:
        samples, rate = decode(data, limits.max_duration_s)
    if samples.size == 0:
        raise AudioError("zero-length audio: the file decodes to 0 samples")
    if not np.isfinite(samples).all():
        raise AudioError("audio contains NaN or infinite samples")
    duration = samples.size / rate
    if duration < limits.min_duration_s:
        raise AudioError(f"audio is {duration:.3f} s long; the minimum is {limits.min_duration_s:g} s")
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave


def decode(data: bytes, max_duration_s: float) -> tuple[np.ndarray, int]:
    """(mono float32 samples, native sample rate) by the first decoder that understands `data`.

    Raises AudioTooLongError past `max_duration_s`, having decoded at most one block more."""
    if sphere.is_sphere(data):
        return _decode_sphere(data, max_duration_s)
    riff_error = _check_riff(data)
    if riff_error:
        raise AudioError(riff_error)
    decoded = _decode_soundfile(data, max_duration_s)
    return decoded if decoded is not None else _decode_ffmpeg(data, max_duration_s)


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


def _decode_soundfile(data: bytes, max_s: float) -> tuple[np.ndarray, int] | None:
    """libsndfile's decode, or None when it cannot read `data` (then PyAV gets a try).

    libsndfile's frame count comes from the header (WAV: clamped to the bytes present) and
    soundfile never reads past it. A count over the limit is refused before decoding, except
    MP3's, which may be a bitrate estimate: that reads one frame past the limit at most. A file
    with a count is read in one call, as `sf.read` does (libmpg123 decodes slightly differently
    in pieces); a stream that did not record its length is read block by block."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = _check_rate(f.samplerate)
            if f.frames == _SF_UNKNOWN_LENGTH:
                return _collect(_soundfile_blocks(f), rate, max_s), rate
            if f.frames > max_s * rate and f.format != "MP3":
                raise _too_long(f.frames / rate, max_s)
            f.seek(0)
            wanted = f.frames if f.frames <= max_s * rate else int(max_s * rate) + 1
            block = f.read(wanted, dtype="float32", always_2d=True).mean(axis=1)
            return _collect([block], rate, max_s), rate
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None


def _soundfile_blocks(f: sf.SoundFile) -> Iterator[np.ndarray]:
    while len(block := f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)):
        yield block.mean(axis=1)


def _collect(blocks: Iterable[np.ndarray], rate: int, max_s: float, stop_at: int = 0) -> np.ndarray:
    """Concatenate mono blocks, refusing as soon as they pass `max_s`; `stop_at` > 0 truncates
    there instead (SPHERE's sample_count, which the caller has checked against the limit)."""
    kept, total = [], 0
    for block in blocks:
        kept.append(block)
        total += len(block)
        if stop_at and total >= stop_at:
            break
        if total > max_s * rate:
            raise _too_long(total / rate, max_s, samples_decoded=total)
    samples = np.concatenate(kept) if kept else np.zeros(0, np.float32)
    return samples[:stop_at] if stop_at else samples


def _too_long(seconds: float, max_s: float, samples_decoded: int = 0) -> AudioTooLongError:
    length = f"at least {seconds:.1f} s" if samples_decoded else f"{seconds:.1f} s"
    return AudioTooLongError(f"audio is {length} long; the limit is {max_s:g} s", samples_decoded)


def _check_rate(rate: int) -> int:
    if rate <= 0:
        raise AudioError(f"invalid sample rate {rate} Hz in the audio header")
    return rate


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


def _decode_sphere(data: bytes, max_s: float) -> tuple[np.ndarray, int]:
    try:
        header = sphere.parse_header(data)
        count, rate = header.sample_count, header.sample_rate
        if count and rate > 0 and count > max_s * rate:
            raise _too_long(count / rate, max_s)
        if "shorten" in header.coding:
            stream = sphere.shorten_with_wav_header(data[header.header_bytes:], header)
            samples, shn_rate = _decode_ffmpeg(stream, max_s, container="shn", stop_at=count)
            return samples, rate or shn_rate
    except sphere.SphereError as exc:
        raise AudioError(f"unreadable NIST SPHERE file: {exc}") from None
    return _decode_ffmpeg(data, max_s, container="nistsphere")


def _decode_ffmpeg(data: bytes, max_s: float, container: str | None = None,
                   stop_at: int = 0) -> tuple[np.ndarray, int]:
    """PyAV's decode, frame by frame. FFmpeg's durations may be estimates from the bitrate
    (a 600 s ADTS AAC reads as 581 s), so they refuse nothing: decoded samples are counted."""
    try:
        with av.open(io.BytesIO(data), format=container, metadata_errors="ignore") as box:
            if not box.streams.audio:
                raise AudioError("no audio stream in the file")
            stream = box.streams.audio[0]
            rate = _check_rate(stream.codec_context.sample_rate or 0)
            samples = _collect(_ffmpeg_blocks(box, stream, rate), rate, max_s, stop_at)
    except AudioError:
        raise
    except (av.FFmpegError, ValueError, IndexError, OSError) as exc:
        raise AudioError(f"undecodable audio ({_short(exc)})") from None
    return samples.astype(np.float32, copy=False), rate


def _ffmpeg_blocks(box: av.container.InputContainer, stream: av.AudioStream,
                   rate: int) -> Iterator[np.ndarray]:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    for frame in box.decode(stream):
        for out in resampler.resample(frame):
            yield out.to_ndarray().reshape(-1)
    for out in resampler.resample(None):
        yield out.to_ndarray().reshape(-1)


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]

