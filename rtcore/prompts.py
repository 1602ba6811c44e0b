"""Rendering the script's prompts to audio: 16 kHz mono WAV (and raw .sln16 for Asterisk).

`rtcore prompts build` writes `<prompts_dir>/<audio>.wav` and `.sln16` for every prompt, where
`audio` is the prompt's sound name (e.g. rtcore/ask_zip_code): copy the tree into Asterisk's
sounds directory (e.g. /var/lib/asterisk/sounds/fr/) so that `sound:rtcore/ask_zip_code` plays
it; the simulator reads the WAVs for their durations. A prompt whose text and TTS command are
unchanged since the last build is not rendered again (manifest.json keeps their hashes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from rtcore.dialog.script import DialogScript

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000
MANIFEST = "manifest.json"


class PromptError(RuntimeError):
    pass


@dataclass(frozen=True)
class Rendered:
    name: str
    path: Path
    seconds: float
    cached: bool


def build_prompts(script: DialogScript, out_dir: Path, tts_command: str, force: bool = False) -> list[Rendered]:
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    manifest: dict[str, str] = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    tool = shlex.split(tts_command)[0] if tts_command.strip() else ""
    if not tool or shutil.which(tool) is None:
        raise PromptError(f"TTS command {tool!r} not found: install espeak-ng (apt-get install espeak-ng) "
                          "or set tts_command")
    if shutil.which("sox") is None:
        raise PromptError("sox not found: install it (apt-get install sox)")
    results = []
    for prompt in script.prompts.values():
        wav = out_dir / f"{prompt.audio}.wav"
        key = hashlib.sha256(f"{tts_command}\n{prompt.text}".encode()).hexdigest()
        if not force and manifest.get(prompt.audio) == key and wav.exists():
            results.append(Rendered(prompt.name, wav, soundfile.info(str(wav)).duration, True))
            continue
        wav.parent.mkdir(parents=True, exist_ok=True)
        seconds = _render(prompt.text, wav, tts_command)
        manifest[prompt.audio] = key
        results.append(Rendered(prompt.name, wav, seconds, False))
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return results


def _render(text: str, wav: Path, tts_command: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "tts.wav"
        argv = [part.replace("{out}", str(raw)) for part in shlex.split(tts_command)]
        proc = subprocess.run(argv, input=text.encode(), capture_output=True, timeout=120)
        if proc.returncode != 0 or not raw.exists():
            raise PromptError(f"TTS failed for {wav.name}: {proc.stderr.decode(errors='replace').strip()}")
        resampled = Path(tmp) / "16k.wav"
        sox = subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(resampled)],
                             capture_output=True, timeout=120)
        if sox.returncode != 0:
            raise PromptError(f"sox failed for {wav.name}: {sox.stderr.decode(errors='replace').strip()}")
        samples, rate = soundfile.read(str(resampled), dtype="int16")
    soundfile.write(str(wav), samples, SAMPLE_RATE, subtype="PCM_16")
    # Asterisk's native 16 kHz signed linear: host-endian raw samples.
    wav.with_suffix(".sln16").write_bytes(np.asarray(samples, dtype="<i2").tobytes())
    return len(samples) / SAMPLE_RATE


def prompt_durations(out_dir: Path) -> dict[str, float]:
    """Sound name -> seconds, for every rendered prompt under out_dir (the simulator's playback length)."""
    durations = {}
    for wav in out_dir.rglob("*.wav"):
        durations[str(wav.relative_to(out_dir).with_suffix(""))] = soundfile.info(str(wav)).duration
    return durations
