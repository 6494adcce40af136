"""A minimal shorten (v2) encoder, test-side, to build WSJ-like `.wv1` files.

Neither ffmpeg nor sox writes shorten, and real WSJ audio is licensed, so the tests make
their own: NIST SPHERE header + shorten stream (DIFF1 blocks, Rice-coded residuals, no
verbatim WAV header, exactly as the WSJ discs have it).
"""

from __future__ import annotations

import numpy as np

FN_DIFF1, FN_QUIT, FN_BLOCKSIZE = 1, 4, 5
TYPE_S16LH = 5


class _Bits:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def write(self, value: int, n: int) -> None:
        self.bits.extend((value >> i) & 1 for i in range(n - 1, -1, -1))

    def uvar(self, value: int, k: int) -> None:
        self.bits.extend([0] * (value >> k))
        self.bits.append(1)
        self.write(value & ((1 << k) - 1), k)

    def svar(self, value: int, k: int) -> None:
        self.uvar((value << 1) if value >= 0 else (((~value) << 1) | 1), k + 1)

    def ulong(self, value: int) -> None:
        k = value.bit_length()
        self.uvar(k, 2)
        self.uvar(value, k)

    def to_bytes(self) -> bytes:
        bits = self.bits + [0] * ((-len(self.bits)) % 8)
        return np.packbits(np.array(bits, dtype=np.uint8)).tobytes()


def shorten_encode(samples: np.ndarray, blocksize: int = 256) -> bytes:
    """int16 mono samples -> shorten v2 stream."""
    w = _Bits()
    for value in (TYPE_S16LH, 1, blocksize, 0, 0, 0):  # type, channels, blocksize, maxnlpc, nmean, nskip
        w.ulong(value)
    prev, current = 0, blocksize
    for start in range(0, len(samples), blocksize):
        block = samples[start:start + blocksize].astype(np.int64)
        if len(block) != current:
            w.uvar(FN_BLOCKSIZE, 2)
            w.ulong(len(block))
            current = len(block)
        residual = np.diff(np.concatenate([[prev], block]))
        k = max(0, int(np.log2(np.mean(np.abs(residual)) + 1)))
        w.uvar(FN_DIFF1, 2)
        w.uvar(k, 3)
        for r in residual:
            w.svar(int(r), k)
        prev = int(block[-1])
    w.uvar(FN_QUIT, 2)
    return b"ajkg\x02" + w.to_bytes()


def sphere_shorten(samples: np.ndarray, sample_rate: int = 16000) -> bytes:
    """A WSJ-style `.wv1`: 1024-byte NIST header + embedded shorten stream."""
    fields = [
        "database_id -s3 wsj", "channel_count -i 1", f"sample_count -i {len(samples)}",
        f"sample_rate -i {sample_rate}", "sample_n_bytes -i 2", "sample_byte_format -s2 01",
        "sample_sig_bits -i 16", "sample_coding -s26 pcm,embedded-shorten-v2.00", "end_head",
    ]
    header = ("NIST_1A\n   1024\n" + "\n".join(fields) + "\n").encode()
    return header.ljust(1024, b" ") + shorten_encode(samples)


def sphere_pcm(samples: np.ndarray, sample_rate: int = 16000) -> bytes:
    fields = [
        "channel_count -i 1", f"sample_count -i {len(samples)}", f"sample_rate -i {sample_rate}",
        "sample_n_bytes -i 2", "sample_byte_format -s2 01", "sample_coding -s3 pcm", "end_head",
    ]
    header = ("NIST_1A\n   1024\n" + "\n".join(fields) + "\n").encode()
    return header.ljust(1024, b" ") + samples.astype("<i2").tobytes()
