"""The phrasebook's calibration: a variant is kept only when every hearing understands it as meant.

The recognizer and classifier here are stand-ins that say what each hearing heard; the audio is real
espeak-ng synthesis (what the judging is about is the verdict rule, not Whisper)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rtcore.sim.callers.phrasebook import HEARINGS, VOICES, Answer, Calibration, Clip, build_phrasebook, load_phrasebook

STEADY = Answer("owner_steady", "ask_owner_house", "ok_proprio", ("Oui, je suis propriétaire.",))
FLIPPING = Answer("owner_flipping", "ask_owner_house", "ok_proprio", ("Je suis propriétaire de ma maison.",))
SLOT = Answer("slot_morning", "ask_slot_call_back", "ok_slot", ("Plutôt le matin.",),
              slots=(("slot", {"period": "matin"}),))


def test_a_variant_understood_only_once_is_not_kept(tmp_path: Path) -> None:
    answers = (STEADY, FLIPPING, SLOT)
    heard_by_state: list[tuple[str, int]] = []

    def recognize(audios: list[npt.NDArray[np.float32]], states: list[str], hearing: int) -> list[str]:
        assert all(len(a) > 8000 for a in audios)  # real synthesized speech, not placeholders
        heard_by_state.extend((state, hearing) for state in states)
        # The flipping phrase is understood on the first hearing only (garbled on the second, as a
        # live call with another speech start may hear it); the slot's period is lost on hearing 1.
        texts = []
        for n, state in enumerate(states):
            if state == "ask_which_heating":
                texts.append("euh")  # never understood
            elif state == "ask_slot_call_back":
                texts.append("le matin" if hearing == 0 or n % 2 else "le")
            elif n >= len(VOICES) and hearing == 1:
                texts.append("je suis au taille-faire de ma menou")
            else:
                texts.append("oui je suis propriétaire")
        return texts

    def classify(text: str, state: str) -> tuple[str, dict[str, object]]:
        if state == "ask_slot_call_back":
            return ("ok_slot", {"slot": {"period": "matin"}}) if "matin" in text else ("ok_slot", {})
        if state == "ask_which_heating":
            return "unknown", {}
        return ("ok_proprio", {}) if "proprietaire" in text.replace("é", "e") else ("not_proprio", {})

    calibration = Calibration(codec="ulaw", context_tokens=32, judge="test")
    answers = (*answers, Answer("heating_never", "ask_which_heating", "ok_heating", ("Au gaz.",)))
    book = build_phrasebook(tmp_path, recognize, classify, calibration, answers)
    assert {hearing for _, hearing in heard_by_state} == set(range(HEARINGS)) and HEARINGS >= 2
    # A variant misunderstood on its first hearing is not heard again.
    assert ("ask_which_heating", 0) in heard_by_state and ("ask_which_heating", 1) not in heard_by_state
    assert book["heating_never"] == []
    assert len(book["owner_steady"]) == len(VOICES)
    assert book["owner_flipping"] == []
    # Slot variants whose period was lost on the second hearing are dropped, the others kept.
    assert 0 < len(book["slot_morning"]) < len(VOICES)
    manifest = json.loads((tmp_path / f"manifest-{calibration.name}.json").read_text())
    flipping = [e for e in manifest.values() if e["answer"] == "owner_flipping"]
    assert flipping and all(e["intent"] == ["ok_proprio", "not_proprio"] and not e["kept"] for e in flipping)
    assert all(len(e["heard"]) == HEARINGS for e in manifest.values() if e["kept"])

    # A second build reuses the verdicts (no hearing at all) and the PBX loads the same book.
    def paths(book: dict[str, list[Clip]]) -> dict[str, set[Path]]:
        return {key: {clip.path for clip in clips} for key, clips in book.items() if key in kept}

    kept = set(book)
    heard_by_state.clear()
    assert paths(build_phrasebook(tmp_path, recognize, classify, calibration, answers)) == paths(book)
    assert heard_by_state == []
    # The PBX loads the shipped answers' verdicts (slot_morning is one of them).
    assert paths(load_phrasebook(tmp_path, calibration))["slot_morning"] == paths(book)["slot_morning"]
