from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import soundfile

from rtcore.dialog.script import load_script
from rtcore.prompts import build_prompts, prompt_durations
from tests.conftest import REPO


def test_every_prompt_is_rendered_at_16_khz_and_cached(tmp_path: Path) -> None:
    script = load_script()
    command = "espeak-ng -v fr+f3 -s 150 --stdin -w {out}"
    first = build_prompts(script, tmp_path, command)
    assert {r.name for r in first} == set(script.prompts) and not any(r.cached for r in first)
    info = soundfile.info(str(tmp_path / "rtcore" / "ask_zip_code.wav"))
    assert info.samplerate == 16000 and info.channels == 1 and info.duration > 1.0
    assert (tmp_path / "rtcore" / "ask_zip_code.sln16").stat().st_size == info.frames * 2
    durations = prompt_durations(tmp_path)
    assert abs(durations["rtcore/ask_zip_code"] - info.duration) < 1e-6
    again = build_prompts(script, tmp_path, command)
    assert all(r.cached for r in again)


def test_missing_tts_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run([sys.executable, "-m", "rtcore.cli", "prompts", "build", "--out", str(tmp_path)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "install espeak-ng" in proc.stderr and "Traceback" not in proc.stderr
