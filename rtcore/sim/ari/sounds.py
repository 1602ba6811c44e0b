"""`sound:NAME` as Asterisk 22 finds, picks and opens the file (main/file.c, formats/*, main/translate.c).

Why this is modelled and not just "does NAME exist": on a real Asterisk the choice of file decides whether a
prompt plays at all. Measured (../shared/ari/FACTS.md): with a 16 kHz `init.wav` next to `init.sln16`, a
µ-law caller gets the `.wav` (8 kHz slin is the cheapest to turn into µ-law), format_wav.c refuses it
("Unexpected frequency mismatch 16000 (expecting 8000)") and every playback fails.

What Asterisk does, and so `SoundLibrary.lookup` does, for a channel of language L:
1. fileexists_core(): the first location, in the order sounds/L/NAME, L without its last `_suffix` (again
   and again), sounds/NAME (no language), sounds/en/NAME (unless L was en), where a file with a registered
   extension exists. Every codec found there is a candidate (the "file caps").
2. ast_set_write_format_from_cap() → ast_translator_best_choice(): a codec the channel has natively (the
   highest rate if several), else the file codec with the cheapest translation path to the channel's
   codec (translate.c's table costs, with its quirks: a one-step path beats a cheaper multi-step one
   that came earlier; ties go to the smaller rate gap, then the codec's quality).
3. filehelper(ACTION_OPEN): the first file, in the format list's order, of a format with that codec that
   opens. Raw formats always open; wav/wav16 check their RIFF header (8000 / 16000 Hz only). None opens →
   the playback fails.

The format list is Asterisk's: most recently registered first, modules loaded in name order (format_wav
before format_sln before format_pcm ...). Formats of modules the simulator does not model (ogg, speex,
iLBC, siren, g726, video...) are left out, as if their module was not loaded: their files are not seen.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from rtcore.dialog.ari.formats import (
    CODEC_RATES,
    FILE_FORMATS,
    SLIN_RATES,
    FileFormat,
)

log = logging.getLogger(__name__)

DEFAULT_LANGUAGE = "en"
# main/codec_builtin.c: the tie-breaker of ast_translator_best_choice().
CODEC_QUALITY = {"ulaw": 100, "alaw": 100, "gsm": 40, "adpcm": 80, "g729": 45, "g722": 110,
                 **{name: 115 + n for n, name in enumerate(SLIN_RATES)}}
# The codec translators of a stock build (codec_ulaw, codec_alaw, codec_a_mu, codec_gsm, codec_g722,
# codec_adpcm, codec_resample: every slin rate to every other). codec_g729 is not open source: no g729 path.
TRANSLATORS = (
    ("ulaw", "slin"), ("slin", "ulaw"), ("alaw", "slin"), ("slin", "alaw"), ("alaw", "ulaw"), ("ulaw", "alaw"),
    ("gsm", "slin"), ("slin", "gsm"), ("adpcm", "slin"), ("slin", "adpcm"),
    ("g722", "slin"), ("slin", "g722"), ("g722", "slin16"), ("slin16", "g722"),
    *((a, b) for a in SLIN_RATES for b in SLIN_RATES if a != b),
)


# --- translation (main/translate.c) ---------------------------------------------------------------------
def _table_cost(src: str, dst: str) -> int:
    """generate_table_cost(): only the slin codecs are lossless; then the sample rates' relation."""
    src_rate, dst_rate = CODEC_RATES[src], CODEC_RATES[dst]
    src_ll, dst_ll = src in SLIN_RATES, dst in SLIN_RATES
    same, up = src_rate == dst_rate, src_rate < dst_rate
    if src_ll:
        if dst_ll:
            return 400000 if same else 800000 if up else 850000
        return 600000 if same else 825000 if up else 875000
    if dst_ll:
        return 900000 if same else 930000 if up else 960000
    return 915000 if same else 945000 if up else 975000


@functools.cache
def translation_matrix() -> dict[tuple[str, str], tuple[int, bool]]:
    """matrix_rebuild(): (source, destination) → (table cost, multistep), relaxed until stable."""
    matrix: dict[tuple[str, str], tuple[int, bool]] = {}
    for src, dst in TRANSLATORS:
        cost = _table_cost(src, dst)
        if (src, dst) not in matrix or cost < matrix[src, dst][0]:
            matrix[src, dst] = (cost, False)
    codecs = list(CODEC_RATES)
    changed = True
    while changed:
        changed = False
        for x in codecs:
            for y in codecs:
                if x == y or (x, y) not in matrix:
                    continue
                for z in codecs:
                    if z in (x, y) or (y, z) not in matrix:
                        continue
                    cost = matrix[x, y][0] + matrix[y, z][0]
                    if (x, z) not in matrix or cost < matrix[x, z][0]:
                        matrix[x, z] = (cost, True)
                        changed = True
    return matrix


def best_file_codec(file_codecs: list[str], native_codecs: list[str]) -> str | None:
    """The codec Asterisk writes a file in to a channel: ast_translator_best_choice(native, file) as
    set_format() calls it for the write direction; None: no translation path (the playback fails)."""
    joint = [codec for codec in file_codecs if codec in native_codecs]
    if joint:
        return max(joint, key=lambda codec: CODEC_RATES[codec])  # the first of the highest rate
    matrix = translation_matrix()
    best: tuple[str, str] | None = None
    best_cost, best_steps = 2**63, 2**63
    for dst in native_codecs:
        for src in file_codecs:
            path = matrix.get((src, dst))
            if path is None:
                continue
            cost, steps = path[0], int(path[1])
            # Asterisk's test, quirks included: a lower cost OR fewer steps replaces the best so far.
            if cost < best_cost or steps < best_steps:
                best, best_cost, best_steps = (src, dst), cost, steps
            elif (cost, steps) == (best_cost, best_steps) and best is not None:
                gap = abs(CODEC_RATES[src] - CODEC_RATES[dst])
                best_gap = abs(CODEC_RATES[best[0]] - CODEC_RATES[best[1]])
                if gap < best_gap or (gap == best_gap and CODEC_QUALITY[src] > CODEC_QUALITY[best[0]]):
                    best = (src, dst)
    return best[0] if best is not None else None


# --- finding and opening files (main/file.c, formats/format_wav.c) ---------------------------------------
@dataclass(frozen=True, slots=True)
class SoundFile:
    """The file a playback plays: where, in which format, for how long."""

    path: Path
    file_format: FileFormat
    seconds: float


class SoundOpenError(Exception):
    """A file Asterisk finds but cannot open (format_wav.c's header checks); the message is Asterisk's."""


def _wav_data_bytes(path: Path, hz: int) -> int:
    """format_wav.c check_header(): the data chunk's length, or SoundOpenError with Asterisk's warning."""
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12:
            raise SoundOpenError("Read failed (type)")
        if head[:4] != b"RIFF":
            raise SoundOpenError("Does not begin with RIFF")
        if head[8:12] != b"WAVE":
            raise SoundOpenError("Does not contain WAVE")
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                raise SoundOpenError("Read failed (block header format)")
            kind, size = chunk[:4], struct.unpack("<i", chunk[4:])[0]
            if kind == b"fmt ":
                if size < 16:
                    raise SoundOpenError(f"Unexpected header size {size}")
                fmt = f.read(16)
                if len(fmt) < 16:
                    raise SoundOpenError("Read failed (format)")
                audio_format, channels, freq, _, bytes_per_sample = struct.unpack("<HHIIH", fmt[:14])
                if audio_format != 1:
                    raise SoundOpenError(
                        f"Not a supported wav file format ({audio_format}). Only PCM encoded, 16 bit, mono, "
                        "8kHz/16kHz files are supported with a lowercase '.wav' extension.")
                if channels != 1:
                    raise SoundOpenError(f"Not in mono {channels}")
                if freq not in (8000, 16000) or freq != hz:
                    raise SoundOpenError(f"Unexpected frequency mismatch {freq} (expecting {hz})")
                if bytes_per_sample != 2:
                    raise SoundOpenError(f"Can only handle 16bits per sample: {bytes_per_sample}")
                f.seek(size - 16, os.SEEK_CUR)
            elif kind == b"data":
                remaining = path.stat().st_size - f.tell()
                return remaining if size <= 0 or size > remaining else size
            else:
                f.seek(size, os.SEEK_CUR)


def open_sound(path: Path, file_format: FileFormat) -> SoundFile:
    """Opens a file as its format module would; SoundOpenError when it refuses it."""
    if file_format.wav_rate:
        data = _wav_data_bytes(path, file_format.wav_rate)
    else:
        data = path.stat().st_size
    return SoundFile(path, file_format, data / file_format.bytes_per_second)


def candidate_bases(name: str, language: str) -> list[str]:
    """fileexists_core()'s order of places for `name` (relative to the sounds directory, or absolute)."""
    languages: list[str | None] = []
    lang = language
    while lang:
        languages.append(lang)
        if "_" not in lang:
            break
        lang = lang.rsplit("_", 1)[0]
    languages.append(None)
    if language != DEFAULT_LANGUAGE and lang != DEFAULT_LANGUAGE:
        languages.append(DEFAULT_LANGUAGE)
    bases = []
    for lang_dir in languages:
        if lang_dir is None:
            bases.append(name)
        elif name.startswith("/"):  # the old layout: the language goes before the file's own name
            head, _, tail = name.rpartition("/")
            bases.append(f"{head}/{lang_dir}/{tail}")
        else:
            bases.append(f"{lang_dir}/{name}")
    return bases


def find_sound(sounds_dir: Path, name: str, language: str, native_codec: str) -> SoundFile | None:
    """The file Asterisk plays for `sound:name` to a channel of `language` whose codec is `native_codec`;
    None when the playback fails (after logging what Asterisk logs)."""
    for base in candidate_bases(name, language):
        stem = Path(base) if base.startswith("/") else sounds_dir / base
        found = [(fmt, stem.with_name(f"{stem.name}.{ext}")) for fmt in FILE_FORMATS for ext in fmt.exts]
        found = [(fmt, path) for fmt, path in found if path.exists()]
        if found:
            break
    else:
        log.warning("file.c: File %s does not exist in any format", name)
        return None
    file_codecs = list(dict.fromkeys(fmt.codec for fmt, _ in found))
    codec = best_file_codec(file_codecs, [native_codec])
    if codec is None:
        log.warning("channel.c: Unable to find a codec translation path: %s -> %s", "|".join(file_codecs),
                    native_codec)
        return None
    for fmt, path in found:
        if fmt.codec != codec:
            continue
        try:
            sound = open_sound(path, fmt)
        except SoundOpenError as refused:
            log.warning("format_%s.c: %s", "wav" if fmt.wav_rate else fmt.name, refused)
            log.warning("file.c: Unable to open format %s", fmt.name)
            continue
        except OSError:
            continue
        log.info("file.c: Playing '%s.%s' (language '%s')", name, codec, language)
        return sound
    log.warning("file.c: Unable to open %s (format (%s))", name, native_codec)
    return None


# --- the simulator's source of sounds ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SoundLookup:
    """What a `sound:` media item resolves to: whether it plays, and for how long when a real file says so
    (None: the media hooks' `playback_duration` decides)."""

    playable: bool
    seconds: float | None = None
    path: Path | None = None


def default_sound_exists(name: str) -> bool:
    """Every sound exists except names starting with "no-such" (the traces' sound:no-such-sound)."""
    return not name.startswith("no-such")


class SoundLibrary:
    """Where `sound:` media come from: a real sounds directory resolved as Asterisk does, or, without one,
    a collection of names (each as if it were `<name>.sln16` in a sounds directory) or a predicate."""

    def __init__(self, sounds_dir: Path | None = None,
                 sounds: Collection[str] | Callable[[str], bool] | None = None) -> None:
        self.sounds_dir = sounds_dir
        self.names: frozenset[str] | None = None
        self.exists: Callable[[str], bool] = default_sound_exists
        if callable(sounds):
            self.exists = sounds
        elif sounds is not None:
            self.names = frozenset(sounds)
            self.exists = self.names.__contains__

    def lookup(self, name: str, language: str, native_codec: str) -> SoundLookup:
        if self.sounds_dir is None:
            return SoundLookup(self.exists(name))
        sound = find_sound(self.sounds_dir, name, language or DEFAULT_LANGUAGE, native_codec)
        return SoundLookup(False) if sound is None else SoundLookup(True, sound.seconds, sound.path)

    def virtual_files(self) -> list[str] | None:
        """The files GET /sounds indexes without a sounds directory: `<name>.sln16` per known name, or
        None when the sounds are a predicate (nothing to list)."""
        return None if self.names is None else sorted(f"{name}.sln16" for name in self.names)
