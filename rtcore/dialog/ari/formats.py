"""Asterisk 22's sound file formats: which file extension holds which codec, at what data rate.

Facts of Asterisk's formats/*.c and main/file.c, shared by the dialog (`rtcore.dialog.prompts` reads
`GET /sounds`, which names a file's format by its codec: `.sln16` is "slin16", `.wav` is "slin") and
by the simulated Asterisk (rtcore.sim.ari.sounds), which finds and opens prompt files as Asterisk does.
"""

from __future__ import annotations

from dataclasses import dataclass

SLIN_RATES = {"slin": 8000, "slin12": 12000, "slin16": 16000, "slin24": 24000, "slin32": 32000,
              "slin44": 44100, "slin48": 48000, "slin96": 96000, "slin192": 192000}
CODEC_RATES = {**SLIN_RATES, "ulaw": 8000, "alaw": 8000, "gsm": 8000, "adpcm": 8000, "g729": 8000, "g722": 16000}
@dataclass(frozen=True, slots=True)
class FileFormat:
    """One of Asterisk's file formats (ast_format_def): its extensions, codec and data rate."""

    name: str  # the format module's name ("pcm", "wav", "sln16")
    exts: tuple[str, ...]  # in the order filehelper() tries them
    codec: str  # the ast_format name GET /sounds reports ("ulaw", "slin16")
    bytes_per_second: float  # of the audio data, to time a playback
    wav_rate: int = 0  # a RIFF file whose header format_wav.c checks against this rate


# In Asterisk's list order: format_def_register() inserts at the head, modules load in name order.
FILE_FORMATS: tuple[FileFormat, ...] = (
    FileFormat("wav49", ("WAV", "wav49"), "gsm", 1625.0),  # format_wav_gsm: GSM in RIFF, "WAV" in capitals
    FileFormat("wav16", ("wav16",), "slin16", 32000.0, wav_rate=16000),
    FileFormat("wav", ("wav",), "slin", 16000.0, wav_rate=8000),
    FileFormat("vox", ("vox",), "adpcm", 4000.0),
    *(FileFormat(f"sln{rate_name}", (f"sln{rate_name}",), f"slin{rate_name}", SLIN_RATES[f"slin{rate_name}"] * 2.0)
      for rate_name in ("192", "96", "48", "44", "32", "24", "16", "12")),
    FileFormat("sln", ("sln", "slin", "raw"), "slin", 16000.0),
    FileFormat("g722", ("g722",), "g722", 8000.0),
    FileFormat("alaw", ("alaw", "al", "alw"), "alaw", 8000.0),
    FileFormat("pcm", ("pcm", "ulaw", "ul", "mu", "ulw"), "ulaw", 8000.0),
    FileFormat("gsm", ("gsm",), "gsm", 1650.0),  # 33-byte frames, 50 a second
    FileFormat("g729", ("g729",), "g729", 1000.0),
)
EXTENSION_FORMATS: dict[str, FileFormat] = {}
for _format in FILE_FORMATS:
    for _ext in _format.exts:
        EXTENSION_FORMATS.setdefault(_ext, _format)  # ast_get_format_for_file_ext(): first in list order


def format_for_extension(ext: str) -> FileFormat | None:
    """The format a file extension belongs to (case-sensitive, as exts_compare() is); None: unknown."""
    return EXTENSION_FORMATS.get(ext)


