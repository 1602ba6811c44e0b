"""The script's prompts as sound files a real Asterisk plays, installed where it finds them, and checked.

Why these formats (../shared/ari/FACTS.md, "Prompt files"): Asterisk plays the file whose format is
cheapest to translate to the caller's codec, and its `wav` format is 8 kHz only — a 16 kHz `.wav`
fails with "Unexpected frequency mismatch 16000 (expecting 8000)". An older rtcore wrote 16 kHz `.wav`
files next to `.sln16`, so every playback to a µ-law caller failed. Each prompt is now rendered (TTS, then
sox) to three raw files and never to a `.wav`:
- `<audio>.sln16`: 16 kHz signed 16-bit little-endian, Asterisk's native wideband (slin16 callers);
- `<audio>.ulaw`: 8 kHz G.711 µ-law (played as is to µ-law callers);
- `<audio>.alaw`: 8 kHz G.711 A-law (French PSTN trunks are A-law).
`audio` is the prompt's sound name (`rtcore/ask_zip_code`), so `sound:rtcore/ask_zip_code` plays it.

`build_prompts` renders into a cache directory (`prompts_dir`); a prompt whose text and TTS command are
unchanged is not rendered again (manifest.json keeps their hashes, with a version: bumping
`FORMAT_VERSION` re-renders an older build). `install_prompts` copies them into Asterisk's sounds
directory as `<sounds>/rtcore/<name>.*`, which Asterisk finds for every channel language (after
`<sounds>/<lang>/rtcore/<name>`, before `<sounds>/en/...`), and removes the `.wav`/`.wav16` an older rtcore
left there. `check_installed` reads what `GET /sounds` answered and says which prompts Asterisk lacks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtcore.dialog.ari.formats import EXTENSION_FORMATS
from rtcore.dialog.script import DialogScript, Prompt

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 1 wrote 16 kHz .wav + .sln16; 2 writes .sln16 + .ulaw + .alaw
MANIFEST = "manifest.json"
SAMPLE_RATE = 16000
# Extension → sox output options (8 kHz G.711 from sox, never by hand).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "sln16": ("-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", "-L", "-t", "raw"),
    "ulaw": ("-r", "8000", "-c", "1", "-e", "u-law", "-t", "ul"),
    "alaw": ("-r", "8000", "-c", "1", "-e", "a-law", "-t", "al"),
}
SLN16_BYTES_PER_SECOND = 2 * SAMPLE_RATE
STALE_EXTENSIONS = ("wav", "wav16")  # what an older rtcore installed; a 16 kHz .wav breaks playback
RENDER_WORKERS = 4
TOOL_TIMEOUT_S = 120


class PromptError(RuntimeError):
    """Prompts cannot be rendered or installed; the message says why (shown without a traceback)."""


@dataclass(frozen=True)
class Rendered:
    name: str
    audio: str  # the sound name, e.g. rtcore/init
    files: tuple[Path, ...]  # .sln16, .ulaw, .alaw
    seconds: float
    cached: bool

    @property
    def path(self) -> Path:
        """The .sln16 file (the reference rendering)."""
        return self.files[0]


@dataclass
class Installation:
    """What `install_prompts` did, to print."""

    sounds_dir: Path
    rendered: list[Rendered]
    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def remote_hint(self) -> str:
        """How to put the same files on an Asterisk on another host."""
        tops = sorted({r.audio.partition("/")[0] for r in self.rendered if "/" in r.audio})
        parts = [f"rsync -a --delete {self.sounds_dir}/{top}/ asterisk-host:/var/lib/asterisk/sounds/{top}/"
                 for top in tops]
        return ("for a remote Asterisk: " + " && ".join(parts) +
                " (--delete also removes the stale .wav files there)") if parts else ""


# --- rendering -----------------------------------------------------------------------------------
def _prompt_key(prompt: Prompt, tts_command: str) -> str:
    return hashlib.sha256(f"{FORMAT_VERSION}\n{tts_command}\n{prompt.text}".encode()).hexdigest()


def _read_manifest(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or not isinstance(data.get("prompts"), dict):
        return {}  # an older build (a flat {audio: hash}) or a damaged file: render everything again
    return {str(audio): str(key) for audio, key in data["prompts"].items()}


def _check_tools(tts_command: str) -> None:
    tool = shlex.split(tts_command)[0] if tts_command.strip() else ""
    if not tool or shutil.which(tool) is None:
        raise PromptError(f"TTS command {tool!r} not found: install espeak-ng (apt-get install espeak-ng) "
                          "or set tts_command")
    if shutil.which("sox") is None:
        raise PromptError("sox not found: install it (apt-get install sox)")


def _writable_dir(directory: Path, what: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".rtcore-probe-"):
            pass
    except OSError as exc:
        raise PromptError(f"cannot write {what} to {directory}: {exc.strerror or exc}") from None


def prompt_files(directory: Path, audio: str) -> tuple[Path, ...]:
    return tuple(directory / f"{audio}.{ext}" for ext in OUTPUTS)


def build_prompts(script: DialogScript, out_dir: Path, tts_command: str, force: bool = False) -> list[Rendered]:
    """Renders every prompt of `script` into `out_dir/<audio>.sln16|.ulaw|.alaw` (cached)."""
    _check_tools(tts_command)
    _writable_dir(out_dir, "prompts")
    manifest_path = out_dir / MANIFEST
    manifest = _read_manifest(manifest_path)
    prompts = list(script.prompts.values())

    def one(prompt: Prompt) -> Rendered:
        files = prompt_files(out_dir, prompt.audio)
        key = _prompt_key(prompt, tts_command)
        cached = not force and manifest.get(prompt.audio) == key and all(f.exists() for f in files)
        if not cached:
            _render(prompt, files, tts_command)
        _remove_stale(out_dir, prompt.audio)
        return Rendered(prompt.name, prompt.audio, files, files[0].stat().st_size / SLN16_BYTES_PER_SECOND, cached)

    with ThreadPoolExecutor(max_workers=min(RENDER_WORKERS, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, prompts))
    for prompt in prompts:
        manifest[prompt.audio] = _prompt_key(prompt, tts_command)
    try:
        manifest_path.write_text(json.dumps({"version": FORMAT_VERSION, "prompts": manifest}, indent=1, sort_keys=True))
    except OSError as exc:
        raise PromptError(f"cannot write {manifest_path}: {exc.strerror or exc}") from None
    return results


def _run(argv: Sequence[str], what: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=TOOL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PromptError(f"{what}: {exc}") from None
    if proc.returncode != 0:
        raise PromptError(f"{what}: {proc.stderr.decode(errors='replace').strip() or f'exit {proc.returncode}'}")
    return proc


def _render(prompt: Prompt, files: tuple[Path, ...], tts_command: str) -> None:
    """TTS to a WAV, then sox to each raw format; each file is written beside its place and renamed, so a
    running Asterisk (or an interrupted build) never sees half a file."""
    files[0].parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spoken = Path(tmp) / "tts.wav"
        argv = [part.replace("{out}", str(spoken)) for part in shlex.split(tts_command)]
        _run(argv, f"TTS failed for {prompt.audio}", stdin=prompt.text.encode())
        if not spoken.exists():
            raise PromptError(f"TTS failed for {prompt.audio}: {spoken.name} was not written")
        for path, options in zip(files, OUTPUTS.values(), strict=True):
            partial = path.with_name(f".{path.name}.partial")
            _run(["sox", str(spoken), *options, str(partial)], f"sox failed for {path.name}")
            os.replace(partial, path)
    log.info("prompt rendered", extra={"prompt": prompt.name, "audio": prompt.audio})


def _remove_stale(directory: Path, audio: str) -> list[Path]:
    removed = []
    for ext in STALE_EXTENSIONS:
        stale = directory / f"{audio}.{ext}"
        if stale.is_file() or stale.is_symlink():
            try:
                stale.unlink()
            except OSError as exc:
                raise PromptError(f"cannot remove the stale {stale}: {exc.strerror or exc}") from None
            log.warning("removed %s: an older rtcore wrote it, and a 16 kHz .wav fails every playback on Asterisk",
                        stale)
            removed.append(stale)
    return removed


# --- installing ------------------------------------------------------------------------------------
def install_prompts(script: DialogScript, sounds_dir: Path, prompts_dir: Path, tts_command: str,
                    force: bool = False) -> Installation:
    """Renders (cached in `prompts_dir`) and installs every prompt as `sounds_dir/<audio>.*` (files 0644,
    new folders 0755), removing the stale `.wav`/`.wav16` an older rtcore put there."""
    _writable_dir(sounds_dir, "sounds")
    installation = Installation(sounds_dir, build_prompts(script, prompts_dir, tts_command, force))
    for rendered in installation.rendered:
        for source in rendered.files:
            target = sounds_dir / f"{rendered.audio}{source.suffix}"
            _install_file(source, target, sounds_dir)
            installation.written.append(target)
        installation.removed += _remove_stale(sounds_dir, rendered.audio)
        installation.warnings += _shadowing(sounds_dir, rendered.audio)
    return installation


def _install_file(source: Path, target: Path, root: Path) -> None:
    try:
        _make_dirs(target.parent, root)
        if target.exists() and target.samefile(source):
            return  # installing into the build directory itself
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(source, partial)
        partial.chmod(0o644)
        os.replace(partial, target)
    except OSError as exc:
        raise PromptError(f"cannot install {target}: {exc.strerror or exc}") from None


def _make_dirs(directory: Path, root: Path) -> None:
    missing = []
    current = directory
    while current != root and not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        folder.chmod(0o755)


def _shadowing(sounds_dir: Path, audio: str) -> list[str]:
    """Files in a language folder that Asterisk plays instead of ours to that language's channels."""
    top = audio.partition("/")[0]
    warnings = []
    try:
        languages = sorted(e.name for e in os.scandir(sounds_dir) if e.is_dir() and e.name != top)
    except OSError:
        return []
    for language in languages:
        for ext in EXTENSION_FORMATS:
            other = sounds_dir / language / f"{audio}.{ext}"
            if other.is_file():
                warnings.append(f"{other} is played instead of {sounds_dir}/{audio}.* to channels of language "
                                f"{language!r}: remove it unless it is meant to")
    return warnings


# --- checking what Asterisk has ----------------------------------------------------------------------
@dataclass(frozen=True)
class PromptCheck:
    """Which prompts Asterisk can play, from its GET /sounds."""

    missing: tuple[str, ...]  # prompt names no channel can play
    warnings: tuple[str, ...]
    # Prompt name → the channel languages it plays for (None: every language).
    languages: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing


G711 = ("ulaw", "alaw")
TRANSLATABLE = frozenset({"ulaw", "alaw", "gsm", "g722", "adpcm", "slin", "slin12", "slin16", "slin24", "slin32",
                          "slin44", "slin48", "slin96", "slin192"})


def _sound_formats(sounds: Iterable[Any]) -> dict[tuple[str, str], set[str]]:
    """(sound id, language) → formats, from GET /sounds' JSON (malformed entries are skipped)."""
    found: dict[tuple[str, str], set[str]] = {}
    for sound in sounds:
        if not isinstance(sound, Mapping) or not isinstance(sound.get("id"), str):
            continue
        for pair in sound.get("formats") or ():
            if (
                isinstance(pair, Mapping)
                and isinstance(pair.get("language"), str)
                and isinstance(pair.get("format"), str)
            ):
                found.setdefault((sound["id"], pair["language"]), set()).add(pair["format"])
    return found


def _format_warnings(audio: str, where: str, formats: set[str]) -> list[str]:
    if not formats & TRANSLATABLE:
        return [
            (
                f"sound:{audio} in {where} has no format Asterisk translates for a G.711 caller "
                f"({', '.join(sorted(formats))})"
            )
        ]
    if "slin" not in formats:
        return []
    # The slin path (600000) is cheaper than alaw<->ulaw (915000) and any two-step one: without the
    # caller's own codec Asterisk picks the slin file, and a .wav there must be 8 kHz.
    callers = [codec for codec in G711 if codec not in formats]
    if not callers:
        return []
    return [
        (
            f"sound:{audio} in {where} plays a slin file (.wav, .sln or .raw) to {' and '.join(callers)} callers: "
            "a .wav must be 8 kHz (a 16 kHz .wav fails every playback); `rtcore prompts install` writes "
            ".sln16, .ulaw and .alaw"
        )
    ]


def check_installed(script: DialogScript, sounds: Iterable[Any]) -> PromptCheck:
    """Whether Asterisk has every prompt of `script` in a playable format, from the JSON list its
    `GET /sounds` returned ([] when it answered 404).

    Asterisk's index takes every top-level folder for a language, so `sounds/rtcore/init.*` (where
    `rtcore prompts install` puts `sound:rtcore/init`, playable from every channel language) is listed
    as id `init` in language `rtcore`, and `sounds/L/rtcore/init.*` as id `rtcore/init` in language L,
    which plays only to channels of language L (or its dialects), or to all when L is en (the fallback).
    """
    index = _sound_formats(sounds)
    missing: list[str] = []
    warnings: list[str] = []
    languages: dict[str, tuple[str, ...] | None] = {}
    for prompt in script.prompts.values():
        audio = prompt.audio
        top, slash, rest = audio.partition("/")
        root = index.get((rest, top)) if slash and rest else None
        per_language = {lang: formats for (sound_id, lang), formats in index.items() if sound_id == audio}
        if root is None and not per_language:
            missing.append(prompt.name)
            if not slash:
                warnings.append(
                    f"sound:{audio} cannot be checked: GET /sounds does not list files at the top "
                    "of the sounds directory"
                )
            continue
        if root is not None:
            warnings += _format_warnings(audio, f"sounds/{top}/", root)
        for lang, formats in sorted(per_language.items()):
            warnings += _format_warnings(audio, f"sounds/{lang}/", formats)
        if root is not None or "en" in per_language:
            languages[prompt.name] = None
        else:
            languages[prompt.name] = tuple(sorted(per_language))
            folders = ", ".join(f"sounds/{lang}/" for lang in sorted(per_language))
            advice = f"; `rtcore prompts install` puts it in sounds/{top}/ for every language" if slash else ""
            warnings.append(
                f"sound:{audio} is only in {folders}: it plays only to channels whose language is "
                f"{' or '.join(sorted(per_language))}{advice}"
            )
    return PromptCheck(tuple(missing), tuple(warnings), languages)
