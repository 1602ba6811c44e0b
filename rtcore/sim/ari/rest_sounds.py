"""GET /sounds and GET /sounds/{soundId}: Asterisk's sounds index (main/sounds.c, main/media_index.c,
res/ari/resource_sounds.c), rebuilt on every request as Asterisk rebuilds it.

Why its quirks matter: a client checks its prompts with these before taking calls, and the index does not
mirror how playback finds files. Every top-level subdirectory of the sounds directory is taken for a
language, so `sounds/rtcore/init.sln16` is listed as id `init` in language `rtcore` (while playback finds
it for `sound:rtcore/init` from any language), `sounds/fr/rtcore/init.sln16` as id `rtcore/init` in `fr`,
and files at the top level are not listed at all. Formats are codec names from the extension (`.sln16` and
`.wav16` → slin16, `.wav` → slin); an unknown extension is skipped; `.txt` files hold descriptions
(`id: text` lines, `;` comments, lines without `:` continue the previous text), and a Sound's `text` is
its `en` description. Names and languages compare case-insensitively (the first spelling seen is kept).
Asterisk's order is that of hash containers; the simulator sorts ids, languages and files instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtcore.dialog.ari.formats import format_for_extension
from rtcore.sim.ari.pbx import SimulatedPbx
from rtcore.sim.ari.rest import Reply, handles, ok
from rtcore.sim.ari.sounds import DEFAULT_LANGUAGE
from rtcore.sim.ari.swagger import Arguments, AriError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Variant:
    language: str
    description: str = ""
    formats: list[str] = field(default_factory=list)  # codec names, in the order first seen


@dataclass(slots=True)
class IndexedSound:
    name: str
    variants: dict[str, Variant] = field(default_factory=dict)  # by lower-cased language

    def variant(self, language: str) -> Variant:
        return self.variants.setdefault(language.lower(), Variant(language))


class SoundIndex:
    """ast_media_index: sound name → language → formats and description."""

    def __init__(self) -> None:
        self.sounds: dict[str, IndexedSound] = {}  # by lower-cased name

    def variant(self, name: str, language: str) -> Variant:
        sound = self.sounds.setdefault(name.lower(), IndexedSound(name))
        return sound.variant(language)

    def get(self, name: str) -> IndexedSound | None:
        return self.sounds.get(name.lower())


def index_files(files: dict[str, list[tuple[str, Path | None]]], only: str | None = None) -> SoundIndex:
    """Builds the index from each language's files (path relative to the language folder, and where to read
    a description file); `only` restricts it to one sound, as ast_sounds_get_index_for_file() does."""
    index = SoundIndex()
    for language in sorted(files, key=str.lower):
        for relative, location in sorted(files[language]):
            base, dot, ext = relative.rpartition(".")
            if not dot:
                continue
            if ext == "txt":
                if location is not None:
                    _read_descriptions(index, language, location, only)
                continue
            file_format = format_for_extension(ext)
            if file_format is None or (only is not None and base != only):
                continue
            formats = index.variant(base, language).formats
            if file_format.codec not in formats:
                formats.append(file_format.codec)
    return index


def _read_descriptions(index: SoundIndex, language: str, path: Path, only: str | None) -> None:
    """process_description_file(): `id: text`, continuation lines, `;` comments."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        log.warning("media_index.c: Could not open media description file '%s': %s", path, exc.strerror)
        return
    current: str | None = None
    text = ""

    def archive() -> None:
        if current is not None and text and (only is None or only == current):
            index.variant(current, language).description = text

    for line in lines:
        if line.startswith(";"):
            continue
        line = line.rstrip()
        identifier, colon, description = line.partition(":")
        if not colon:
            if current is not None:
                text += "\n" + identifier
            continue
        archive()
        current, text = identifier, description.lstrip()
    archive()


def directory_files(sounds_dir: Path) -> dict[str, list[tuple[str, Path | None]]] | None:
    """Every file under each top-level subdirectory (a "language") of a sounds directory; None when the
    directory cannot be read (Asterisk then has no index)."""
    try:
        languages = sorted(entry.name for entry in os.scandir(sounds_dir) if entry.is_dir())
    except OSError:
        log.error("sounds.c: Failed to open %s", sounds_dir)
        return None
    files: dict[str, list[tuple[str, Path | None]]] = {}
    for language in languages:
        root = sounds_dir / language
        found = files.setdefault(language, [])
        for folder, _, names in os.walk(root, followlinks=True):
            for name in names:
                path = Path(folder) / name
                if path.is_file():
                    found.append((path.relative_to(root).as_posix(), path))
    return files


def virtual_directory(paths: list[str]) -> dict[str, list[tuple[str, Path | None]]]:
    """The same listing for files that exist only by name (`a/b.sln16` is file `b.sln16` of language `a`)."""
    files: dict[str, list[tuple[str, Path | None]]] = {}
    for path in paths:
        language, slash, relative = path.partition("/")
        if slash and relative:
            files.setdefault(language, []).append((relative, None))
    return files


def current_index(pbx: SimulatedPbx, only: str | None = None) -> SoundIndex | None:
    library = pbx.media.sounds
    if library.sounds_dir is not None:
        files = directory_files(library.sounds_dir)
        return None if files is None else index_files(files, only)
    virtual = library.virtual_files()
    return index_files(virtual_directory(virtual), only) if virtual is not None else SoundIndex()


def sound_json(sound_id: str, sound: IndexedSound | None, lang: str | None = None,
               file_format: str | None = None) -> dict[str, Any] | None:
    """create_sound_blob(): None when no (language, format) pair is left after the filters."""
    if sound is None:
        return None
    blob: dict[str, Any] = {"id": sound_id}
    english = sound.variants.get(DEFAULT_LANGUAGE)
    if english is not None and english.description:
        blob["text"] = english.description
    pairs = [{"language": variant.language, "format": codec}
             for _, variant in sorted(sound.variants.items())
             if not lang or variant.language == lang
             for codec in variant.formats if not file_format or codec == file_format]
    if not pairs:
        return None
    blob["formats"] = pairs
    return blob


@handles("sounds.list")
def list_sounds(pbx: SimulatedPbx, args: Arguments) -> Reply:
    index = current_index(pbx)
    if index is None:
        raise AriError(500, "Internal Error", "Sounds index not available")
    listed = [sound_json(sound.name, sound, args.text("lang"), args.text("format"))
              for _, sound in sorted(index.sounds.items())]
    found = [blob for blob in listed if blob is not None]
    if not found:
        raise AriError(404, "Not Found", "No sounds found that matched the query")
    return ok(found)


@handles("sounds.get")
def get_sound(pbx: SimulatedPbx, args: Arguments) -> Reply:
    sound_id = args.text("soundId") or ""
    index = current_index(pbx, only=sound_id)
    blob = sound_json(sound_id, index.get(sound_id) if index is not None else None)
    if blob is None:
        raise AriError(404, "Not Found", "Sound not found")
    return ok(blob)
