"""Which utterances of a call make one turn (rtcore.dialog.joining), in every arrival order."""

from __future__ import annotations

from rtcore.dialog.joining import TurnJoiner, join
from rtcore.runtime.messages import Transcript


def said(utterance_id: str, text: str, eos_at: float = 0.0, **fields: object) -> Transcript:
    return Transcript(utterance_id=utterance_id, call_id="c", text=text, eos_at=eos_at, **fields)  # type: ignore[arg-type]


def test_a_transcript_alone_is_a_turn() -> None:
    joiner = TurnJoiner(1.2)
    joiner.cut("u1", 10.0)
    assert joiner.transcript(said("u1", "Oui.")) == said("u1", "Oui.")
    assert joiner.applied == "u1"


def test_speech_within_the_window_continues_the_last_cut_and_joins_either_order() -> None:
    for order in (("u1", "u2"), ("u2", "u1")):
        joiner = TurnJoiner(1.2)
        joiner.cut("u1", 10.0)
        assert joiner.speech_started(10.5) == "u1"
        joiner.cut("u2", 12.0)
        pieces = {"u1": said("u1", "Oui,", 10.0), "u2": said("u2", "je suis propriétaire.", 12.0)}
        first, second = order
        assert joiner.transcript(pieces[first]) is None  # waits for the other piece
        turn = joiner.transcript(pieces[second])
        assert turn is not None and turn.text == "Oui, je suis propriétaire." and turn.eos_at == 12.0
        assert joiner.joining is None and joiner.held == {}


def test_a_turn_already_understood_is_held_and_joined_with_its_continuation() -> None:
    joiner = TurnJoiner(1.2)
    joiner.cut("u1", 10.0)
    first = joiner.transcript(said("u1", "Alors,"))
    assert first is not None and joiner.speech_started(10.9) == "u1"
    joiner.hold(first)  # the controller undid its turn
    joiner.cut("u2", 11.5)
    turn = joiner.transcript(said("u2", "au gaz."))
    assert turn is not None and turn.text == "Alors, au gaz."


def test_no_join_outside_the_window_nor_when_disabled_and_a_missing_continuation_gives_up() -> None:
    joiner = TurnJoiner(1.2)
    joiner.cut("u1", 10.0)
    assert joiner.speech_started(11.5) is None and joiner.speech_started(9.0) is None
    assert TurnJoiner(0.0).speech_started(10.1) is None
    assert joiner.speech_started(10.4) == "u1"
    assert joiner.transcript(said("u1", "Oui.")) is None
    turn = joiner.give_up()
    assert turn is not None and turn.text == "Oui." and joiner.joining is None


def test_a_piece_that_is_not_speech_adds_nothing() -> None:
    joined = join(said("u1", "Oui, je suis propriétaire."), said("u2", "Sous-titres réalisés par", hallucination=True))
    assert joined.text == "Oui, je suis propriétaire." and not joined.hallucination
    nothing = join(said("u1", "", error="overrun"), said("u2", "", hallucination=True))
    assert nothing.text == "" and nothing.hallucination
