"""What the ASR refuses to take as the caller's words (rtcore.asr.filters)."""

from __future__ import annotations

import pytest

from rtcore.asr.filters import flag, is_loop, wrong_language


@pytest.mark.parametrize("text", [
    "3, 2, 3, 4, 3, 4, 3, 4",  # measured on a real Asterisk: loops of three went unflagged
    "à l'élection de l'élection de l'élection",
    "Pour réservoir un vert d'eau. Pour réservoir un vert d'eau. Pour réservoir un vert d'eau.",
])
def test_loops_of_three_are_flagged(text: str) -> None:
    assert is_loop(text)


@pytest.mark.parametrize("text", [
    "soixante-quinze zéro zéro zéro",  # 75000
    "non non non", "oui oui oui, je suis propriétaire",
    "Je suis propriétaire, je suis propriétaire.",
    "Oui, je suis propriétaire d'une maison, et la maison est chauffée au gaz depuis que la maison est à nous.",
])
def test_what_callers_do_repeat_is_not_a_loop(text: str) -> None:
    assert not is_loop(text)


def test_text_not_in_the_call_language_is_flagged() -> None:
    assert wrong_language("Thank you.", "fr") and wrong_language("I'm going to the store.", "fr")
    assert wrong_language("ありがとうございました", "fr")
    for french in ("Okay, d'accord.", "Oui, je suis propriétaire.", "Au gaz.", "Yes, c'est ça.", "75011"):
        assert not wrong_language(french, "fr"), french
    assert not wrong_language("Thank you.", "en")  # only French is checked


def test_flag_reasons() -> None:
    rules = {"no_speech_threshold": 0.5, "logprob_threshold": -1.0, "compression_ratio_threshold": 2.4}
    assert flag("", -0.2, 0.0, language="fr", **rules) == "empty"
    assert flag("Merci.", -1.5, 0.8, language="fr", **rules) == "no speech"
    assert flag("Merci.", -0.5, 0.8, language="fr", **rules) == ""  # confident: speech after all
    assert flag("3, 4, 3, 4, 3, 4", -0.3, 0.0, language="fr", **rules) == "repetition"
    assert flag("Sous-titres réalisés par la communauté d'Amara.org", -0.3, 0.1, language="fr", **rules) == \
        "known hallucination"
    assert flag("Thank you.", -0.3, 0.1, language="fr", **rules) == "wrong language"
    assert flag("Oui, je suis propriétaire.", -0.3, 0.05, language="fr", **rules) == ""


def test_a_doubtful_window_needs_a_surer_transcript_to_pass() -> None:
    rules = {"no_speech_threshold": 0.6, "logprob_threshold": -1.0, "compression_ratio_threshold": 2.4,
             "no_speech_doubt": 0.5, "doubt_logprob_threshold": -1.4}
    assert flag("C'est ça ?", -1.6, 0.58, language="fr", **rules) == "no speech"  # wide-band hiss, measured
    assert flag("Oui, je suis propriétaire.", -1.2, 0.55, language="fr", **rules) == ""  # a real answer, phone band
    assert flag("C'est la fin.", -1.8, 0.74, language="fr", **rules) == "no speech"  # phone-band noise, measured
    assert flag("...", -0.5, 0.2, language="fr", **rules) == "empty"
