"""Prompts a real Asterisk plays: rendered to .sln16/.ulaw/.alaw (never .wav), installed where Asterisk
finds them, checked against GET /sounds, and played by the simulator as Asterisk would play them."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile

from rtcore.dialog.prompts import MANIFEST, build_prompts, check_installed, install_prompts
from rtcore.dialog.script import DialogScript, Prompt, load_script
from rtcore.sim.ari import AriSimulator
from tests.conftest import REPO

COMMAND = "espeak-ng -v fr+f3 -s 150 --stdin -w {out}"
APP, USER, PASSWORD = "rtcore", "asterisk", "s3cret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.fixture(scope="module")
def script() -> DialogScript:
    return load_script()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, script: DialogScript) -> Path:
    """Every shipped prompt, rendered once for the module (the cache later tests install from)."""
    out = tmp_path_factory.mktemp("prompts")
    first = build_prompts(script, out, COMMAND)
    assert {r.name for r in first} == set(script.prompts) and not any(r.cached for r in first)
    return out


def small(script: DialogScript, *names: str) -> DialogScript:
    return dataclasses.replace(script, prompts={name: script.prompts[name] for name in names})


def espeak_seconds(text: str, tmp: Path) -> float:
    wav = tmp / "direct.wav"
    subprocess.run(COMMAND.replace("{out}", str(wav)).split(), input=text.encode(), check=True, capture_output=True)
    return soundfile.info(str(wav)).duration


def test_prompts_are_sln16_at_16_khz_and_g711_at_8_khz_never_wav(built: Path, script: DialogScript,
                                                                  tmp_path: Path) -> None:
    assert not list(built.rglob("*.wav")) and not list(built.rglob("*.wav16"))
    for prompt in script.prompts.values():
        sln16, ulaw, alaw = (built / f"{prompt.audio}.{ext}" for ext in ("sln16", "ulaw", "alaw"))
        seconds = sln16.stat().st_size / 32000
        assert sln16.stat().st_size % 2 == 0 and seconds > 0.5
        assert abs(ulaw.stat().st_size - seconds * 8000) <= 8  # the same audio, 1 byte a sample at 8 kHz
        assert alaw.stat().st_size == ulaw.stat().st_size
    # The rates are the ones named: the same text straight from espeak-ng lasts as long.
    prompt = script.prompts["ask_zip_code"]
    direct = espeak_seconds(prompt.text, tmp_path)
    samples = (built / f"{prompt.audio}.sln16").stat().st_size / 2
    assert abs(samples - direct * 16000) <= 16
    assert abs((built / f"{prompt.audio}.ulaw").stat().st_size - direct * 8000) <= 8
    # Little-endian: read so, speech is smooth (neighbouring samples close); byte-swapped it is noise.
    pcm = np.fromfile(built / f"{prompt.audio}.sln16", dtype="<i2").astype(np.float64)
    assert np.abs(np.diff(pcm)).mean() < 0.5 * np.abs(pcm).mean()
    swapped = pcm.astype("<i2").byteswap().astype(np.float64)
    assert np.abs(np.diff(swapped)).mean() > np.abs(swapped).mean()


def test_an_unchanged_prompt_is_not_rendered_again(tmp_path: Path, script: DialogScript) -> None:
    two = small(script, "init", "bye_qualified")
    assert not any(r.cached for r in build_prompts(two, tmp_path, COMMAND))
    assert all(r.cached for r in build_prompts(two, tmp_path, COMMAND))
    changed = dataclasses.replace(two, prompts={**two.prompts, "init": Prompt("init", "Bonjour.", "rtcore/init")})
    again = {r.name: r.cached for r in build_prompts(changed, tmp_path, COMMAND)}
    assert again == {"init": False, "bye_qualified": True}
    assert (tmp_path / "rtcore" / "init.sln16").stat().st_size / 32000 < 1.5
    assert all(not r.cached for r in build_prompts(changed, tmp_path, COMMAND, force=True))
    # A build by an older rtcore (flat manifest, 16 kHz .wav) is rendered again, and its .wav goes.
    (tmp_path / MANIFEST).write_text(json.dumps({p.audio: "old" for p in changed.prompts.values()}))
    soundfile.write(str(tmp_path / "rtcore" / "init.wav"), np.zeros(1600, np.int16), 16000)
    assert all(not r.cached for r in build_prompts(changed, tmp_path, COMMAND))
    assert not (tmp_path / "rtcore" / "init.wav").exists()


def test_install_writes_every_format_and_removes_a_stale_wav(built: Path, script: DialogScript,
                                                             tmp_path: Path) -> None:
    sounds = tmp_path / "sounds"
    (sounds / "rtcore").mkdir(parents=True)
    stale = sounds / "rtcore" / "init.wav"
    soundfile.write(str(stale), np.zeros(16000, np.int16), 16000)  # what an older rtcore installed
    (sounds / "rtcore" / "init.wav16").write_bytes(b"")
    (sounds / "fr" / "rtcore").mkdir(parents=True)
    (sounds / "fr" / "rtcore" / "bye_qualified.ulaw").write_bytes(b"\xff" * 800)
    done = install_prompts(script, sounds, built, COMMAND)
    assert all(r.cached for r in done.rendered)  # from the build cache
    assert sorted(done.removed) == [stale, sounds / "rtcore" / "init.wav16"]
    assert not stale.exists()
    assert len(done.written) == 3 * len(script.prompts)
    for prompt in script.prompts.values():
        for ext in ("sln16", "ulaw", "alaw"):
            installed = sounds / f"{prompt.audio}.{ext}"
            assert installed.read_bytes() == (built / f"{prompt.audio}.{ext}").read_bytes()
            assert stat.S_IMODE(installed.stat().st_mode) == 0o644
    assert not list(sounds.rglob("*.partial"))
    assert [w for w in done.warnings if "bye_qualified.ulaw" in w and "'fr'" in w]
    assert done.remote_hint().startswith(f"for a remote Asterisk: rsync -a --delete {sounds}/rtcore/ ")


def test_install_creates_folders_0755(built: Path, script: DialogScript, tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        install_prompts(small(script, "init"), tmp_path / "new" / "sounds", built, COMMAND)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "sounds" / "rtcore").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "new" / "sounds" / "rtcore" / "init.ulaw").stat().st_mode) == 0o644


def ari_time(event: dict[str, object]) -> float:
    return datetime.strptime(str(event["timestamp"]), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


async def play_to_callers(sim: AriSimulator, media: list[str]) -> dict[str, tuple[str, float]]:
    """Plays each media to its own µ-law caller at once; media → (final state, seconds it played)."""
    headers = {"Authorization": BASIC}
    async with aiohttp.ClientSession(headers=headers) as http:
        websocket = await http.ws_connect(sim.events_url())
        await sim.wait_for_subscriber()
        for n, uri in enumerate(media):
            caller = await sim.place_call()
            async with http.post(f"{sim.url}/channels/{caller}/play",
                                 params={"media": uri, "playbackId": f"p{n}"}) as response:
                assert response.status == 201
        await sim.wait_until(lambda: sum(e["type"] == "PlaybackFinished" for e in sim.events) == len(media),
                             timeout=30)
        await websocket.close()
    played = {}
    for n, uri in enumerate(media):
        events = {e["type"]: e for e in sim.events if e.get("playback", {}).get("id") == f"p{n}"}
        assert set(events) == {"PlaybackStarted", "PlaybackFinished"}
        finished = events["PlaybackFinished"]
        played[uri] = (finished["playback"]["state"], ari_time(finished) - ari_time(events["PlaybackStarted"]))
    return played


async def test_the_simulator_plays_every_installed_prompt_for_its_duration(built: Path, script: DialogScript,
                                                                           tmp_path: Path) -> None:
    install_prompts(script, tmp_path, built, COMMAND)
    async with AriSimulator(APP, USER, PASSWORD, sounds_dir=tmp_path) as sim:
        played = await play_to_callers(sim, [f"sound:{p.audio}" for p in script.prompts.values()])
    for prompt in script.prompts.values():
        state, seconds = played[f"sound:{prompt.audio}"]
        expected = (tmp_path / f"{prompt.audio}.ulaw").stat().st_size / 8000  # what a µ-law caller gets
        assert state == "done" and abs(seconds - expected) < 0.15, (prompt.name, seconds, expected)


async def test_a_16_khz_wav_fails_as_on_asterisk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "rtcore").mkdir()
    soundfile.write(str(tmp_path / "rtcore" / "wide.wav"), np.zeros(16000, np.int16), 16000)  # the old build
    soundfile.write(str(tmp_path / "rtcore" / "narrow.wav"), np.zeros(4000, np.int16), 8000)
    shutil.copy(tmp_path / "rtcore" / "wide.wav", tmp_path / "rtcore" / "both.wav")
    (tmp_path / "rtcore" / "both.sln16").write_bytes(bytes(16000))  # the .wav still wins for µ-law
    (tmp_path / "rtcore" / "wide16.sln16").write_bytes(bytes(16000))  # .sln16 alone plays
    caplog.set_level(logging.WARNING, logger="rtcore.sim.ari")
    async with AriSimulator(APP, USER, PASSWORD, sounds_dir=tmp_path) as sim:
        played = await play_to_callers(sim, ["sound:rtcore/wide", "sound:rtcore/narrow", "sound:rtcore/both",
                                             "sound:rtcore/wide16"])
    assert played["sound:rtcore/wide"][0] == played["sound:rtcore/both"][0] == "failed"
    assert played["sound:rtcore/narrow"][0] == played["sound:rtcore/wide16"][0] == "done"
    assert abs(played["sound:rtcore/narrow"][1] - 0.5) < 0.1 and abs(played["sound:rtcore/wide16"][1] - 0.5) < 0.1
    assert "format_wav.c: Unexpected frequency mismatch 16000 (expecting 8000)" in caplog.messages


# --- check_installed -------------------------------------------------------------------------------
def sounds_json(audios: list[str], language_of: str | None, formats: tuple[str, ...]) -> list[dict[str, object]]:
    """GET /sounds as Asterisk answers it for `sounds/<language_of>/<audio>.*` (None: `sounds/<audio>.*`)."""
    listed: list[dict[str, object]] = []
    for audio in audios:
        top, _, rest = audio.partition("/")
        sound_id, language = (rest, top) if language_of is None else (audio, language_of)
        listed.append({"id": sound_id, "formats": [{"language": language, "format": f} for f in formats]})
    return listed


def test_check_installed_reads_asterisks_index(script: DialogScript) -> None:
    audios = [p.audio for p in script.prompts.values()]
    core = [{"id": "hello-world", "text": "Hello world.", "formats": [{"language": "en", "format": "gsm"}]}]
    installed = check_installed(script, core + sounds_json(audios, None, ("alaw", "slin16", "ulaw")))
    assert installed.ok and installed.missing == () and installed.warnings == ()
    assert set(installed.languages.values()) == {None}

    nothing = check_installed(script, [])  # GET /sounds answered 404
    assert set(nothing.missing) == set(script.prompts) and not nothing.ok

    # The layout an older rtcore suggested: sounds/fr/rtcore/*.wav (16 kHz) and .sln16.
    french = check_installed(script, sounds_json(audios, "fr", ("slin", "slin16")))
    assert french.missing == () and set(french.languages.values()) == {("fr",)}
    assert any("sound:rtcore/init is only in sounds/fr/" in w for w in french.warnings)
    assert any("sound:rtcore/init in sounds/fr/ plays a slin file" in w and "ulaw and alaw callers" in w
               for w in french.warnings)

    english = check_installed(script, sounds_json(audios, "en", ("slin16",)))  # en is every language's fallback
    assert english.ok and english.warnings == () and set(english.languages.values()) == {None}

    partial = sounds_json(audios[1:], None, ("ulaw", "slin"))  # a stale .wav beside a .ulaw: bad for A-law
    some = check_installed(script, partial)
    first = next(p.name for p in script.prompts.values() if p.audio == audios[0])
    assert some.missing == (first,)
    assert any(f"sound:{audios[1]} in sounds/rtcore/ plays a slin file" in w and "to alaw callers" in w
               for w in some.warnings)


async def test_check_installed_against_the_simulators_index(built: Path, script: DialogScript,
                                                            tmp_path: Path) -> None:
    install_prompts(script, tmp_path, built, COMMAND)
    headers = {"Authorization": BASIC}
    async with (AriSimulator(APP, USER, PASSWORD, sounds_dir=tmp_path) as sim,
                aiohttp.ClientSession(headers=headers) as http, http.get(f"{sim.url}/sounds") as response):
        assert response.status == 200
        listed = await response.json()
    assert "init" in {sound["id"] for sound in listed}  # Asterisk's quirk: sounds/rtcore/ is "language" rtcore
    check = check_installed(script, listed)
    assert check.ok and check.warnings == ()


# --- command line --------------------------------------------------------------------------------
def run_cli(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path} if path is not None else None
    return subprocess.run([sys.executable, "-m", "rtcore.cli", "prompts", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_missing_tts_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli("build", "--out", str(tmp_path), path=str(Path(sys.executable).parent))
    assert proc.returncode == 2
    assert "install espeak-ng" in proc.stderr and "Traceback" not in proc.stderr


def test_install_into_an_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_cli("install", "--sounds-dir", str(blocker / "sounds"), "--prompts-dir", str(tmp_path / "cache"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"rtcore: cannot write sounds to {blocker / 'sounds'}: Not a directory"]


async def test_simulated_callers_hear_the_installed_prompts(built: Path, script: DialogScript, tmp_path: Path) -> None:
    """The embedded PBX's callers (CallerMedia) hear a prompt for as long as its installed file lasts."""
    from rtcore.sim.callers.pbx import CallerMedia, CallerPbx, SimulatedCall
    from rtcore.sim.callers.scenarios import SCENARIOS

    heard: list[tuple[str, str]] = []

    class Listening(CallerPbx):
        def prompt_started(self, call: SimulatedCall, media_uri: str) -> None:
            heard.append(("started", media_uri))

        def prompt_played(self, call: SimulatedCall, media_uri: str) -> None:
            heard.append(("played", media_uri))

    shortest = min(script.prompts.values(), key=lambda p: (built / f"{p.audio}.ulaw").stat().st_size)
    install_prompts(small(script, shortest.name), tmp_path, built, COMMAND)
    media = CallerMedia(None)
    async with AriSimulator(APP, USER, PASSWORD, sounds_dir=tmp_path, hooks=media) as sim:
        callers = Listening(sim, media, {}, [])
        async with aiohttp.ClientSession(headers={"Authorization": BASIC}) as http:
            websocket = await http.ws_connect(sim.events_url())
            await sim.wait_for_subscriber()
            simulated = await callers.place_call(SCENARIOS[0])
            async with http.post(f"{sim.url}/channels/{simulated.channel_id}/play",
                                 params={"media": f"sound:{shortest.audio}", "playbackId": "p"}) as response:
                assert response.status == 201
            started = await sim.wait_for(lambda e: e["type"] == "PlaybackStarted")
            finished = await sim.wait_for(lambda e: e["type"] == "PlaybackFinished", timeout=30)
            await websocket.close()
        await callers.close()
    assert finished["playback"]["state"] == "done"
    assert heard == [("started", f"sound:{shortest.audio}"), ("played", f"sound:{shortest.audio}")]
    expected = (tmp_path / f"{shortest.audio}.ulaw").stat().st_size / 8000
    assert abs(ari_time(finished) - ari_time(started) - expected) < 0.15
