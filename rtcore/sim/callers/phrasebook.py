"""What simulated callers say, as audio: French phrases synthesized with espeak-ng and calibrated.

Each answer (an `Answer`: what a caller says in a dialog state, and the intent the bot should
understand) has several phrasings. Every phrasing is synthesized in several voice/speed variants,
and a variant is kept only if the shipped ASR and intent classifier get it right, so that demo
calls follow the path their script intends. Synthesized French is often mis-heard by Whisper base:
calibration is what makes simulated calls reproducible. Results are cached by content hash.
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


# A slot that must be found, whatever its value: synthesized days and hours are heard so badly
# that demanding the exact callback slot would leave no variant; the lead keeps what was heard.
PRESENT = "<present>"
# Changes when the way variants are judged changes, so that old verdicts are not reused.
CALIBRATION = "vad-segmented-v2"


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
        (("slot", PRESENT),),
    ),
    Answer(
        "slot_friday_afternoon",
        "ask_slot_call_back",
        "ok_slot",
        ("Vendredi après-midi.", "Le vendredi après-midi.", "Vendredi après-midi, ça me va."),
        (("slot", PRESENT),),
    ),
    Answer(
        "slot_monday_evening",
        "ask_slot_call_back",
        "ok_slot",
        ("Lundi soir.", "Le lundi en fin de journée, vers dix-huit heures."),
        (("slot", PRESENT),),
    ),
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


def synthesize(text: str, voice: str, speed: int, out: Path) -> None:
    """espeak-ng at 22.05 kHz, then sox to 16 kHz mono 16-bit."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise RuntimeError("simulated callers need espeak-ng and sox (apt-get install espeak-ng sox)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
            check=True,
            capture_output=True,
            timeout=60,
        )
        subprocess.run(
            ["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out)],
            check=True,
            capture_output=True,
            timeout=60,
        )


Recognizer = Callable[[list[npt.NDArray[np.float32]]], list[str]]  # audio -> transcripts
Classifier = Callable[[str, str], tuple[str, dict[str, Any]]]  # (text, state) -> (intent, slots)


def build_phrasebook(
    cache_dir: Path, recognize: Recognizer, classify: Classifier, answers: tuple[Answer, ...] = ANSWERS
) -> dict[str, list[Clip]]:
    """Synthesize every phrasing x voice, keep what the ASR + classifier understand as intended.

    The manifest remembers verdicts by content (text, voice, speed and the answer's expectation),
    so a second build only loads. Returns answer key -> kept clips (possibly empty)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / "manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    todo: list[tuple[str, Answer, str, str, int, Path]] = []
    current: set[str] = set()
    for answer in answers:
        for text in answer.phrases:
            for voice, speed in VOICES:
                key = hashlib.sha256(
                    json.dumps(
                        [CALIBRATION, text, voice, speed, answer.intent, answer.state, [list(s) for s in answer.slots]],
                        default=str,
                    ).encode()
                ).hexdigest()[:16]
                path = cache_dir / f"{answer.key}-{key}.wav"
                current.add(key)
                if key not in manifest or not path.exists():
                    synthesize(text, voice, speed, path)
                    todo.append((key, answer, text, voice, speed, path))
    if todo:
        audios = [soundfile.read(str(t[5]), dtype="float32")[0] for t in todo]
        texts = recognize(audios)
        for (key, answer, text, voice, speed, _path), heard in zip(todo, texts, strict=True):
            intent, slots = classify(heard, answer.state)
            ok = intent == answer.intent and all(_slot_matches(slots.get(name), value) for name, value in answer.slots)
            manifest[key] = {
                "answer": answer.key,
                "text": text,
                "voice": voice,
                "speed": speed,
                "heard": heard,
                "intent": intent,
                "kept": ok,
            }
    # Verdicts of phrasings or judging rules no longer in use go, with their audio.
    for key in set(manifest) - current:
        (cache_dir / f"{manifest.pop(key)['answer']}-{key}.wav").unlink(missing_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=True))
    book: dict[str, list[Clip]] = {a.key: [] for a in answers}
    for key, entry in manifest.items():
        if entry["kept"] and entry["answer"] in book:
            path = cache_dir / f"{entry['answer']}-{key}.wav"
            if path.exists():
                book[entry["answer"]].append(Clip(entry["answer"], entry["text"], entry["voice"], entry["speed"], path))
    for answer_key, clips in book.items():
        if not clips:
            log.warning(
                "phrasebook: no variant of %r was understood as %s; callers will not use it",
                answer_key,
                ANSWERS_BY_KEY[answer_key].intent if answer_key in ANSWERS_BY_KEY else "?",
            )
    return book


def _slot_matches(found: Any, wanted: Any) -> bool:
    if wanted == PRESENT:
        return found is not None
    if isinstance(wanted, dict):  # a callback slot: the day and period that were meant
        return isinstance(found, dict) and all(found.get(k) == v for k, v in wanted.items())
    return bool(found == wanted)


def load_phrasebook(cache_dir: Path) -> dict[str, list[Clip]]:
    """The clips a previous build kept (no synthesis, no ASR): what the PBX process uses."""
    manifest_path = cache_dir / "manifest.json"
    book: dict[str, list[Clip]] = {a.key: [] for a in ANSWERS}
    if not manifest_path.exists():
        return book
    for key, entry in json.loads(manifest_path.read_text()).items():
        path = cache_dir / f"{entry['answer']}-{key}.wav"
        if entry["kept"] and entry["answer"] in book and path.exists():
            book[entry["answer"]].append(Clip(entry["answer"], entry["text"], entry["voice"], entry["speed"], path))
    return book
