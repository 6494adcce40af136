"""Real audio for tests: espeak-ng speech and encoders for every container we accept."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import av
import numpy as np
import soundfile as sf


def espeak(text: str, path: Path, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> Path:
    """Speak `text` with espeak-ng into a WAV file (22.05 kHz mono, as espeak writes it)."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path),
                    text], check=True, capture_output=True)
    return path


def tone(seconds: float = 1.0, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * np.sin(2 * np.pi * 3 * freq * t)).astype(np.float32)


def encode(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    """Encode float samples with soundfile (WAV/FLAC/OGG) or PyAV (MP3)."""
    if fmt == "MP3":
        return _encode_mp3(samples, rate)
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _encode_mp3(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as box:
        stream = box.add_stream("libmp3lame", rate=rate, layout="mono")
        frame_size = 1152
        pcm = samples.astype(np.float32)
        for start in range(0, len(pcm), frame_size):
            chunk = pcm[start:start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    return buf.getvalue()
