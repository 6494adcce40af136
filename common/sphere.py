"""NIST SPHERE reading, including WSJ's shorten-compressed `.wv1` files.

FFmpeg's shorten decoder insists that a stream begin with a verbatim block holding a
WAV header; shorten streams embedded in SPHERE (as on the WSJ discs) have none, since
the SPHERE header carries that information. Rather than write a shorten decoder, we
splice the missing verbatim WAV header into the bitstream and hand it to PyAV.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SPHERE_MAGIC = b"NIST_1A"
SHORTEN_MAGIC = b"ajkg"
_FN_VERBATIM = 9
_ULONGSIZE, _FNSIZE, _VERBATIM_CKSIZE, _VERBATIM_BYTE = 2, 2, 5, 8


class SphereError(ValueError):
    """A SPHERE file whose header or shorten stream cannot be understood."""


@dataclass(frozen=True)
class SphereHeader:
    fields: dict[str, str | int | float]
    header_bytes: int

    @property
    def sample_rate(self) -> int:
        return int(self.fields.get("sample_rate", 0))

    @property
    def channels(self) -> int:
        return int(self.fields.get("channel_count", 1))

    @property
    def sample_count(self) -> int:
        return int(self.fields.get("sample_count", 0))

    @property
    def coding(self) -> str:
        return str(self.fields.get("sample_coding", "pcm")).lower()


def is_sphere(data: bytes) -> bool:
    return data[:7] == SPHERE_MAGIC


def parse_header(data: bytes) -> SphereHeader:
    """Parse `NIST_1A\\n   1024\\nname -type value\\n...end_head`."""
    try:
        lines = data[:64].split(b"\n")
        header_bytes = int(lines[1].strip())
        text = data[:header_bytes].decode("ascii", errors="replace")
    except (IndexError, ValueError) as exc:
        raise SphereError("malformed NIST SPHERE header") from exc
    if header_bytes < 16 or header_bytes > len(data):
        raise SphereError(f"SPHERE header claims {header_bytes} bytes, file has {len(data)}")
    fields: dict[str, str | int | float] = {}
    for line in text.split("\n")[2:]:
        line = line.strip()
        if line == "end_head":
            break
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        name, kind, value = parts
        if kind == "-i":
            fields[name] = int(value)
        elif kind == "-r":
            fields[name] = float(value)
        else:
            fields[name] = value
    return SphereHeader(fields, header_bytes)


class _BitReader:
    """MSB-first reader of shorten's Rice-coded header values."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.nbits = 8 * len(data)
        self.pos = 0

    def bit(self) -> int:
        if self.pos >= self.nbits:
            raise SphereError("shorten stream ends inside its header")
        self.pos += 1
        return (self.value >> (self.nbits - self.pos)) & 1

    def bits(self, n: int) -> int:
        out = 0
        for _ in range(n):
            out = (out << 1) | self.bit()
        return out

    def uvar(self, k: int) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 64:
                raise SphereError("corrupt shorten stream (runaway unary code)")
        return (zeros << k) | self.bits(k)

    def ulong(self) -> int:
        return self.uvar(self.uvar(_ULONGSIZE))


def _rice_bits(value: int, k: int) -> tuple[int, int]:
    """(bits, length) of `value` Rice-coded with parameter k, MSB first."""
    q = value >> k
    return ((1 << k) | (value & ((1 << k) - 1))), q + 1 + k


def _wav_header(sample_rate: int, channels: int, samples: int) -> bytes:
    data_bytes = 2 * samples * channels
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * 2 * channels,
                          2 * channels, 16)
            + b"data" + struct.pack("<I", data_bytes))


def shorten_with_wav_header(stream: bytes, header: SphereHeader) -> bytes:
    """Return a shorten stream FFmpeg accepts: `stream` plus a verbatim WAV header block."""
    if stream[:4] != SHORTEN_MAGIC or len(stream) < 6:
        raise SphereError("SPHERE says shorten, but the data has no 'ajkg' shorten magic")
    version = stream[4]
    if version < 1:
        raise SphereError(f"shorten version {version} is not supported")
    body = stream[5:]
    reader = _BitReader(body[:512])
    for _ in range(5):  # type, channels, blocksize, maxnlpc, nmean
        reader.ulong()
    nskip = reader.ulong()
    reader.bits(8 * nskip)
    params_end = reader.pos
    if reader.uvar(_FNSIZE) == _FN_VERBATIM:
        return stream  # already carries a header FFmpeg can read
    if header.sample_rate <= 0 or header.channels <= 0:
        raise SphereError("SPHERE header lacks a valid sample_rate/channel_count")

    wav = _wav_header(header.sample_rate, header.channels, header.sample_count)
    codes = [(_FN_VERBATIM, _FNSIZE), (len(wav), _VERBATIM_CKSIZE)]
    codes += [(byte, _VERBATIM_BYTE) for byte in wav]
    verbatim, vlen = 0, 0
    for value, k in codes:
        code, n = _rice_bits(value, k)
        verbatim, vlen = (verbatim << n) | code, vlen + n

    total = 8 * len(body)
    value = int.from_bytes(body, "big")
    tail_bits = total - params_end
    head = value >> tail_bits
    tail = value & ((1 << tail_bits) - 1)
    spliced = (((head << vlen) | verbatim) << tail_bits) | tail
    nbits = total + vlen
    pad = (-nbits) % 8
    out = (spliced << pad).to_bytes((nbits + pad) // 8, "big")
    return stream[:5] + out
