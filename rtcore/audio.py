"""Audio files and sample formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """A file that cannot be read as audio."""


def load_audio(path: str | Path) -> npt.NDArray[np.float32]:
    """Any file FFmpeg (PyAV, through faster-whisper) can decode, as 16 kHz mono float32."""
    from faster_whisper.audio import decode_audio

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except Exception as exc:  # PyAV raises many kinds of errors for undecodable input
        raise AudioError(f"{path}: cannot decode audio: {exc}") from None
    return np.asarray(audio, dtype=np.float32)


def pcm16_to_float(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
    """int16 PCM -> float32 in [-1, 1), what Silero and Whisper take."""
    return samples.astype(np.float32) * np.float32(1.0 / 32768.0)


def float_to_pcm16(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)
