"""The telephone band the simulated callers go through: G.711 exactly as the reference coder, and
what a phone line does to a known signal."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from rtcore.sim.telephony import alaw_decode, alaw_encode, telephone_band, ulaw_decode, ulaw_encode

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)


def test_g711_coders_match_the_reference_for_every_input() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # CPython's C coder (Sun's g711.c), up to 3.12
    assert np.array_equal(ulaw_encode(ALL_SAMPLES), np.frombuffer(audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2), np.uint8))
    assert np.array_equal(alaw_encode(ALL_SAMPLES), np.frombuffer(audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2), np.uint8))
    assert np.array_equal(ulaw_decode(ALL_CODES), np.frombuffer(audioop.ulaw2lin(ALL_CODES.tobytes(), 2), np.int16))
    assert np.array_equal(alaw_decode(ALL_CODES), np.frombuffer(audioop.alaw2lin(ALL_CODES.tobytes(), 2), np.int16))


def test_companding_round_trip_keeps_about_38_db_snr_and_the_sign() -> None:
    x = ALL_SAMPLES[::7]
    for encode, decode in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
        y = decode(encode(x)).astype(float)
        assert np.all(np.sign(y[np.abs(x) > 64]) == np.sign(x[np.abs(x) > 64]))
        loud = np.abs(x) > 1000  # companding noise is relative to the level
        snr = 10 * np.log10(np.mean(x[loud].astype(float) ** 2) / np.mean((y[loud] - x[loud]) ** 2))
        assert snr > 30


def tone(hz: float, seconds: float = 1.0, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
def test_a_phone_line_keeps_the_voice_band_and_removes_what_is_above_4_khz(codec: str) -> None:
    voice, treble = tone(440), tone(6000)
    heard = telephone_band(voice, codec)  # type: ignore[arg-type]
    assert heard.dtype == np.int16 and len(heard) == len(voice)
    inner = slice(200, -200)  # the resamplers' edges
    error = heard[inner].astype(float) - voice[inner]
    assert 10 * np.log10(np.mean(voice[inner].astype(float) ** 2) / np.mean(error ** 2)) > 30
    assert np.abs(telephone_band(treble, codec)[inner]).max() < 0.01 * 8000  # type: ignore[arg-type]


def test_a_wide_band_caller_is_left_as_is_and_a_bad_codec_is_refused() -> None:
    voice = tone(6000)
    assert telephone_band(voice, "slin16") is voice
    with pytest.raises(ValueError, match="unknown caller codec 'opus'"):
        telephone_band(voice, "opus")  # type: ignore[arg-type]
