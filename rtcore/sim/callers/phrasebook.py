"""What simulated callers say, as audio: French phrases synthesized with espeak-ng and calibrated.

Each answer (an `Answer`: what a caller says in a dialog state, the intent the bot should understand,
and the slots it carries) has several phrasings. Every phrasing is synthesized in several voice/speed
variants, and a variant is kept only if the shipped VAD, ASR (with the state's context) and intent
classifier get it right *after the phone line* (`Calibration`: the caller codec, e.g. G.711 µ-law),
so that scripted calls follow the path their script intends. Synthesized French is often mis-heard
by Whisper base, the more so at 8 kHz: calibration is what makes simulated calls reproducible. A
phrasing with a " | " is a hesitation: its two parts are spoken with a pause between them. Audio is
cached by content hash, verdicts per calibration (one manifest each).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000
# Measured: of espeak-ng's French variants, klatt voices spoken slowly are what Whisper base
# understands least badly (4/8 test phrases right, against 0-3/8 for the others).
VOICES = (("fr+klatt", 110), ("fr+klatt4", 110), ("fr+klatt4", 135), ("fr", 110), ("fr+m3", 110), ("fr+f2", 110))


# Changes when the way variants are judged changes, so that old verdicts are not reused.
CALIBRATION = "telephone-v5"
# The pause inside a hesitation (" | "), by variant: natural pauses of 0.3 to 0.8 s.
HESITATION_PAUSES_S = (0.35, 0.5, 0.65, 0.8)


@dataclass(frozen=True)
class Calibration:
    """The conditions verdicts hold for: how callers reach the PBX, and how much of the dialog's
    context the ASR gets. Judged without context, no spoken callback slot and no spoken heating
    survive the µ-law line (0 of 132 variants): callers are calibrated for the shipped settings."""

    codec: str = "ulaw"
    context_tokens: int = 32
    judge: str = ""  # a fingerprint of the classifier that judges: a new one judges again

    @property
    def name(self) -> str:
        return f"{CALIBRATION}-{self.codec}-ctx{self.context_tokens}"


@dataclass(frozen=True)
class Answer:
    key: str
    state: str  # the dialog state it answers
    intent: str  # what the bot must understand
    phrases: tuple[str, ...]
    slots: tuple[tuple[str, Any], ...] = ()  # slots the classifier must find, e.g. (("zip_code", "75011"),)


ANSWERS: tuple[Answer, ...] = (
    Answer("yes_time", "init", "ok_eligibility", ("Oui, allez-y.", "Oui, j'ai le temps.", "D'accord, je vous écoute.")),
    Answer(
        "not_interested",
        "init",
        "not_interested",
        ("Non merci, ça ne m'intéresse pas.", "Non, je ne suis pas intéressé.", "Ça ne m'intéresse pas du tout."),
    ),
    Answer(
        "busy",
        "init",
        "busy",
        ("Je n'ai pas le temps, là.", "Je suis occupé, rappelez plus tard.", "Je n'ai pas le temps maintenant."),
    ),
    Answer(
        "zip_75011",
        "ask_zip_code",
        "ok_zipcode",
        ("Soixante-quinze zéro onze.", "C'est le 75011.", "Mon code postal, c'est le soixante-quinze mille onze."),
        (("zip_code", "75011"),),
    ),
    Answer(
        "zip_69003",
        "ask_zip_code",
        "ok_zipcode",
        ("Soixante-neuf zéro zéro trois.", "69003."),
        (("zip_code", "69003"),),
    ),
    Answer(
        "zip_why",
        "ask_zip_code",
        "zipcode_why",
        ("Pourquoi vous avez besoin de mon code postal ?", "Pourquoi voulez-vous mon code postal ?"),
    ),
    Answer(
        "owner_yes",
        "ask_owner_house",
        "ok_proprio",
        ("Oui, je suis propriétaire.", "Oui, c'est ma maison.", "Je suis propriétaire de ma maison."),
    ),
    Answer("tenant", "ask_owner_house", "not_proprio", ("Non, je suis locataire.", "Je suis locataire.")),
    Answer(
        "heating_gas",
        "ask_which_heating",
        "ok_heating",
        ("Au gaz.", "Je me chauffe au gaz naturel.", "On a une chaudière à gaz.", "C'est le gaz."),
        (("heating", "gaz"),),
    ),
    Answer(
        "heating_fuel",
        "ask_which_heating",
        "ok_heating",
        ("Au fioul.", "C'est une chaudière au fioul.", "Je me chauffe au fioul domestique."),
        (("heating", "fioul"),),
    ),
    Answer(
        "heating_electric",
        "ask_which_heating",
        "ok_heating",
        ("À l'électricité.", "Des radiateurs électriques.", "C'est un chauffage électrique."),
        (("heating", "électricité"),),
    ),
    Answer(
        "heating_wood",
        "ask_which_heating",
        "ok_heating",
        ("Au bois.", "Avec un poêle à bois.", "Je me chauffe au bois."),
        (("heating", "bois"),),
    ),
    Answer(
        "callback_yes",
        "ask_be_called_back",
        "ok_callback",
        ("Oui, d'accord.", "Oui, vous pouvez me rappeler.", "Oui, pas de problème."),
    ),
    Answer(
        "callback_no",
        "ask_be_called_back",
        "no_callback",
        ("Non, je ne veux pas être rappelé.", "Non merci, ne me rappelez pas."),
    ),
    Answer(
        "slot_tuesday_morning",
        "ask_slot_call_back",
        "ok_slot",
        ("Mardi matin.", "Plutôt mardi dans la matinée.", "Mardi matin, ce serait bien."),
        (("slot", {"day": "mardi", "period": "matin"}),),
    ),
    Answer(
        "slot_friday_afternoon",
        "ask_slot_call_back",
        "ok_slot",
        ("Vendredi après-midi.", "Le vendredi après-midi.", "Vendredi après-midi, ça me va."),
        (("slot", {"day": "vendredi", "period": "après-midi"}),),
    ),
    Answer(
        "slot_monday_evening",
        "ask_slot_call_back",
        "ok_slot",
        ("Lundi soir.", "Le lundi en fin de journée, vers dix-huit heures."),
        (("slot", {"day": "lundi", "period": "soir"}),),
    ),
    # A time of day alone: synthesized day names do not survive a phone line (0 of 48 variants).
    Answer("slot_morning", "ask_slot_call_back", "ok_slot",
           ("Plutôt le matin.", "Le matin, de préférence.", "Le matin, c'est mieux pour moi."),
           (("slot", {"period": "matin"}),)),
    Answer("slot_afternoon", "ask_slot_call_back", "ok_slot",
           ("Plutôt l'après-midi.", "L'après-midi, ça m'arrange.", "De préférence l'après-midi."),
           (("slot", {"period": "après-midi"}),)),
    Answer("slot_evening", "ask_slot_call_back", "ok_slot",
           ("Plutôt le soir.", "Le soir, après le travail.", "En soirée, de préférence."),
           (("slot", {"period": "soir"}),)),
    # Hesitations: a pause inside the answer (the VAD may cut there; the dialog joins the turn).
    Answer("owner_yes_hesitant", "ask_owner_house", "ok_proprio",
           ("Oui, | je suis propriétaire.", "Euh, | oui, c'est ma maison.")),
    Answer("heating_gas_hesitant", "ask_which_heating", "ok_heating",
           ("Alors, | au gaz.", "On se chauffe | au gaz naturel."), (("heating", "gaz"),)),
    Answer("callback_yes_hesitant", "ask_be_called_back", "ok_callback",
           ("Oui, | vous pouvez me rappeler.", "Euh, | oui, d'accord."), ()),
    Answer("faq_free", "ask_owner_house", "faq3", ("C'est gratuit ?", "Combien ça coûte ?", "C'est payant ?")),
    Answer("faq_robot", "ask_which_heating", "faq5", ("Je parle à un robot ?", "Vous êtes un robot ?")),
    Answer("faq_who", "ask_zip_code", "faq1", ("Vous êtes qui ?", "C'est quelle société ?")),
)
ANSWERS_BY_KEY = {a.key: a for a in ANSWERS}


@dataclass(frozen=True)
class Clip:
    answer: str
    text: str
    voice: str
    speed: int
    path: Path

    def load(self) -> npt.NDArray[np.int16]:
        samples, _ = soundfile.read(str(self.path), dtype="int16")
        return np.asarray(samples, dtype=np.int16)


def synthesize(text: str, voice: str, speed: int, out: Path, pause_s: float = 0.5) -> None:
    """espeak-ng at 22.05 kHz, then sox to 16 kHz mono 16-bit; a hesitation's parts (" | ") are
    spoken apart and joined by `pause_s` of silence."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise RuntimeError("simulated callers need espeak-ng and sox (apt-get install espeak-ng sox)")
    parts = [part.strip() for part in text.split("|") if part.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        spoken = []
        for n, part in enumerate(parts):
            raw, wav = Path(tmp) / f"raw{n}.wav", Path(tmp) / f"part{n}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), part],
                           check=True, capture_output=True, timeout=60)
            subprocess.run(["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(wav)],
                           check=True, capture_output=True, timeout=60)
            spoken.append(soundfile.read(str(wav), dtype="int16")[0])
        gap = np.zeros(int(pause_s * SAMPLE_RATE), dtype=np.int16)
        joined = spoken[0] if len(spoken) == 1 else np.concatenate([x for s in spoken for x in (s, gap)][:-1])
        soundfile.write(str(out), joined, SAMPLE_RATE, subtype="PCM_16")


# (audio, states, hearing) -> transcripts, each heard with the context of the dialog state it answers.
# Hearing 0 is as calibrated before; each further hearing changes what a live call changes and
# calibration does not control (where the speech starts against the VAD's 32 ms chunks, the window
# the batcher pads it to, which utterances share its batch).
Recognizer = Callable[[list[npt.NDArray[np.float32]], list[str], int], list[str]]
# A variant is kept only when every hearing is understood as intended: a transcript that is
# understood by luck (garbled words the state's prior happens to carry) flips on a live call.
HEARINGS = 2
Classifier = Callable[[str, str], tuple[str, dict[str, Any]]]  # (text, state) -> (intent, slots)


def _audio_key(text: str, voice: str, speed: int, pause_s: float) -> str:
    return hashlib.sha256(json.dumps([text, voice, speed, pause_s]).encode()).hexdigest()[:16]


def _judge_key(answer: Answer, calibration: Calibration) -> str:
    return hashlib.sha256(json.dumps([calibration.name, calibration.judge, answer.intent, answer.state,
                                      [list(s) for s in answer.slots]], default=str).encode()).hexdigest()[:16]


def _variants(answer: Answer) -> list[tuple[str, str, int, float]]:
    out = []
    for text in answer.phrases:
        for n, (voice, speed) in enumerate(VOICES):
            pause = HESITATION_PAUSES_S[n % len(HESITATION_PAUSES_S)] if "|" in text else 0.0
            out.append((text, voice, speed, pause))
    return out


def variant_files(cache_dir: Path, answer: Answer) -> list[Path]:
    """Where the synthesized audio of each of `answer`'s variants is (once built)."""
    return [cache_dir / f"{answer.key}-{_audio_key(*variant)}.wav" for variant in _variants(answer)]


def build_phrasebook(cache_dir: Path, recognize: Recognizer, classify: Classifier,
                     calibration: Calibration = Calibration(), answers: tuple[Answer, ...] = ANSWERS
                     ) -> dict[str, list[Clip]]:
    """Synthesize every phrasing x voice, keep what the ASR + classifier understand as intended
    after the phone line of `calibration` (the recognizer applies it).

    Audio is cached by content; the verdicts of each calibration have their own manifest, so a
    second build only loads. Returns answer key -> kept clips (possibly empty)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / f"manifest-{calibration.name}.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    todo: list[tuple[str, Answer, str, str, int, Path]] = []
    current: set[str] = set()
    for answer in answers:
        judged = _judge_key(answer, calibration)
        for text, voice, speed, pause in _variants(answer):
            audio_key = _audio_key(text, voice, speed, pause)
            key = f"{audio_key}-{judged}"
            path = cache_dir / f"{answer.key}-{audio_key}.wav"
            current.add(key)
            if not path.exists():
                synthesize(text, voice, speed, path, pause or 0.5)
            if key not in manifest:
                todo.append((key, answer, text, voice, speed, path))
    if todo:
        audios = [soundfile.read(str(t[5]), dtype="float32")[0] for t in todo]
        states = [t[1].state for t in todo]
        heard: list[list[str]] = [[] for _ in todo]
        intents: list[list[str]] = [[] for _ in todo]
        ok = [True] * len(todo)
        for hearing in range(HEARINGS):
            pending = [n for n in range(len(todo)) if ok[n]]  # a variant misunderstood once is out
            if not pending:
                break
            texts = recognize([audios[n] for n in pending], [states[n] for n in pending], hearing)
            for n, text in zip(pending, texts, strict=True):
                answer = todo[n][1]
                intent, slots = classify(text, answer.state)
                heard[n].append(text)
                intents[n].append(intent)
                ok[n] = intent == answer.intent and all(slot_matches(slots.get(name), value)
                                                        for name, value in answer.slots)
        for n, (key, answer, text, voice, speed, path) in enumerate(todo):
            manifest[key] = {"answer": answer.key, "text": text, "voice": voice, "speed": speed, "heard": heard[n],
                             "intent": intents[n], "kept": ok[n], "file": path.name}
    # Verdicts of phrasings or judging rules no longer in use go.
    for key in set(manifest) - current:
        manifest.pop(key)
    manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=True))
    book = _book(cache_dir, manifest, answers)
    for answer_key, clips in book.items():
        if not clips:
            log.warning("phrasebook (%s): no variant of %r was understood as %s; callers will not use it",
                        calibration.name, answer_key,
                        {a.key: a.intent for a in answers}[answer_key])
    return book


def _book(cache_dir: Path, manifest: dict[str, Any], answers: tuple[Answer, ...] = ANSWERS) -> dict[str, list[Clip]]:
    book: dict[str, list[Clip]] = {a.key: [] for a in answers}
    for entry in manifest.values():
        path = cache_dir / str(entry.get("file", ""))
        if entry["kept"] and entry["answer"] in book and path.is_file():
            book[entry["answer"]].append(Clip(entry["answer"], entry["text"], entry["voice"], entry["speed"], path))
    return book


def slot_matches(found: Any, wanted: Any) -> bool:
    """Whether a slot the classifier found (or a lead holds) is the one meant."""
    if isinstance(wanted, dict):  # a callback slot: the day and period that were meant
        return isinstance(found, dict) and all(found.get(k) == v for k, v in wanted.items())
    return bool(found == wanted)


def load_phrasebook(cache_dir: Path, calibration: Calibration = Calibration()) -> dict[str, list[Clip]]:
    """The clips a previous build kept for `calibration` (no synthesis, no ASR): what the PBX uses."""
    manifest_path = cache_dir / f"manifest-{calibration.name}.json"
    if not manifest_path.exists():
        return {a.key: [] for a in ANSWERS}
    return _book(cache_dir, json.loads(manifest_path.read_text()))
