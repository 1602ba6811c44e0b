"""What a telephone call does to a caller's voice, for the simulated callers and the benchmarks.

A caller reaches Asterisk over the phone network as 8 kHz G.711 (µ-law in North America and most
SIP trunks, A-law on European PSTN lines); Asterisk decodes it and resamples it to the 16 kHz slin16
our externalMedia channel asks for. So what rtcore hears of a real caller has no energy above 4 kHz
and carries G.711's 8-bit companding noise (about 38 dB SNR). `telephone_band` applies exactly that
to 16 kHz audio: resample to 8 kHz (soxr), encode and decode G.711, resample back to 16 kHz.
`slin16` (a wide-band caller: HD voice, a WebRTC or SIP softphone with G.722 or Opus) is left as is.

The G.711 coders are ITU-T G.711 as Sun's reference g711.c writes it (CPython's audioop too; a test
compares all 65536 inputs with it): 16-bit linear to 8-bit codes and back, vectorised with numpy.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import soxr

CallerCodec = Literal["ulaw", "alaw", "slin16"]
CALLER_CODECS: tuple[CallerCodec, ...] = ("ulaw", "alaw", "slin16")
WIDE_BAND_RATE = 16000
NARROW_BAND_RATE = 8000

_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_ULAW_BIAS, _ULAW_CLIP = 0x21, 8159


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """16-bit linear -> G.711 µ-law codes (the 14 most significant bits are coded)."""
    value = pcm.astype(np.int32) >> 2
    mask = np.where(value < 0, 0x7F, 0xFF)
    value = np.minimum(np.abs(value), _ULAW_CLIP) + _ULAW_BIAS
    seg = np.searchsorted(_SEG_UEND, value, side="left")
    code = (seg << 4) | ((value >> (seg + 1)) & 0x0F)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def ulaw_decode(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    u = ~codes.astype(np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def alaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """16-bit linear -> G.711 A-law codes (the 13 most significant bits are coded)."""
    value = pcm.astype(np.int32) >> 3
    mask = np.where(value >= 0, 0xD5, 0x55)
    value = np.where(value >= 0, value, -value - 1)
    seg = np.searchsorted(_SEG_AEND, value, side="left")
    shifted = np.where(seg < 2, value >> 1, value >> np.maximum(seg, 1))
    code = (seg << 4) | (shifted & 0x0F)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def alaw_decode(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    a = codes.astype(np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _resample(pcm: npt.NDArray[np.int16], from_rate: int, to_rate: int) -> npt.NDArray[np.int16]:
    out = soxr.resample(pcm.astype(np.float32), from_rate, to_rate, quality="HQ")
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def telephone_band(pcm16k: npt.NDArray[np.int16], codec: CallerCodec) -> npt.NDArray[np.int16]:
    """16 kHz audio as rtcore receives it after a call over `codec` (same length, 16 kHz)."""
    if codec == "slin16":
        return pcm16k
    if codec not in ("ulaw", "alaw"):
        raise ValueError(f"unknown caller codec {codec!r} (one of {', '.join(CALLER_CODECS)})")
    narrow = _resample(pcm16k, WIDE_BAND_RATE, NARROW_BAND_RATE)
    coded = ulaw_decode(ulaw_encode(narrow)) if codec == "ulaw" else alaw_decode(alaw_encode(narrow))
    wide = _resample(coded, NARROW_BAND_RATE, WIDE_BAND_RATE)
    out = np.zeros(len(pcm16k), dtype=np.int16)
    out[: min(len(out), len(wide))] = wide[: len(out)]
    return out


def telephone_band_float(audio: npt.NDArray[np.float32], codec: CallerCodec) -> npt.NDArray[np.float32]:
    """The same for float32 audio in [-1, 1) (what Whisper and Silero take)."""
    pcm = np.clip(np.rint(audio * 32768.0), -32768, 32767).astype(np.int16)
    return telephone_band(pcm, codec).astype(np.float32) / 32768.0
