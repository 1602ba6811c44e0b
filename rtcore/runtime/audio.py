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


def measure_duration(path: str | Path, stop_after_s: float | None = None) -> float:
    """Seconds of audio in the file's first audio stream, counted by decoding it without keeping
    the samples: container headers can be absent or lie, and a small compressed upload can decode
    to hours of audio, so a length limit must be checked before `load_audio` holds it all in memory.
    Counting stops once past `stop_after_s`. A frame that fails to decode ends the count early
    (`load_audio` then decides whether the file is usable)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    seconds = 0.0
    try:
        with av.open(str(path), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: contains no audio stream")
            try:
                for frame in container.decode(audio=0):
                    if frame.sample_rate:
                        seconds += frame.samples / frame.sample_rate
                    if stop_after_s is not None and seconds > stop_after_s:
                        break
            except av.error.FFmpegError:
                pass
    except av.error.FFmpegError as exc:
        raise AudioError(f"{path}: cannot decode audio: {exc}") from None
    return seconds


def pcm16_to_float(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
    """int16 PCM -> float32 in [-1, 1), what Silero and Whisper take."""
    return samples.astype(np.float32) * np.float32(1.0 / 32768.0)


def float_to_pcm16(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)
