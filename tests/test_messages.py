from __future__ import annotations

import msgspec
import pytest

from rtcore.runtime import messages as m

EXAMPLES: list[m.Message] = [
    m.CallStarted(call_id="c1", slot=3, generation=7, caller="+33612345678", rtp_source="127.0.0.1:10000",
                  started_at=1.5),
    m.CallEnded(call_id="c1", slot=3, generation=7, reason="caller hung up", ended_at=2.5),
    m.ListenMode(call_id="c1", mode="ignore"),
    m.SpeechStarted(call_id="c1", slot=3, generation=7, start_sample=16000, at=3.25),
    m.UtteranceReady(utterance_id="c1-0001", call_id="c1", slot=3, generation=7, start_sample=16000,
                     end_sample=48000, eos_at=4.0),
    m.Transcript(utterance_id="c1-0001", call_id="c1", text="soixante-quinze zéro onze", avg_logprob=-0.3,
                 no_speech_prob=0.01, hallucination=False, eos_at=4.0, queue_ms=12.0, features_ms=3.0,
                 inference_ms=250.0, batch_size=6, worker="asr-0", published_at=4.5),
    m.AsrCredit(worker="asr-0", pid=44, capacity=16),
    m.AsrCredit(worker="asr-1", pid=45, capacity=8, holding=("c1-0", "c2-512")),
    m.AsrStatus(pid=40, started_at=1.0, pending=3, in_flight=4, workers=2, capacity=16, throughput=5.5,
                expected_wait_ms=540.0, queue_limit=2000, refused_full=0),
    m.ProcessStarted(process="vad", pid=51, restarts=1),
    m.Drain(timeout_s=60.0, requested_at=1.0),
    m.TurnTaken(call_id="c1", utterance_id="c1-0001", intent="ok_zipcode", eos_to_transcript_ms=420.0,
                eos_to_reply_ms=480.0),
    m.Play(call_id="c1", playback_id="p1", media="sound:rtcore/ask_zip_code"),
    m.StopPlayback(call_id="c1", playback_id="p1"),
    m.ProcessReady(process="vad", pid=42),
    m.ProcessFailed(process="asr-0", pid=43, error="ModelError: no model"),
    m.Heartbeat(process="vad", pid=42, seq=9, sent_at=5.0),
    m.Metrics(process="vad", values={"batch_size": 12.0, "tick_ms": 1.5}),
    m.CallContext(call_id="c1", context="Au gaz, au fioul, à l'électricité, au bois."),
    m.CallView(call_id="c1", state="ask_owner", started_at=1.5, turns=1, last_transcript="soixante-quinze zéro onze",
               last_intent="ok_zipcode", last_turn_ms=480.0),
    m.CallView(call_id="c1", state="ended", started_at=1.5, turns=5, ended_at=60.0, outcome="qualified"),
    m.RunStatus(sent_at=5.0, processes=(m.ProcessState(name="vad", pid=42, up=True, heartbeat_age_s=0.4, restarts=0,
                                                      cpu_percent=12.5, rss_bytes=120 << 20),
                                       m.ProcessState(name="asr-0", pid=0, up=False, heartbeat_age_s=-1.0,
                                                      restarts=2, cpu_percent=0.0, rss_bytes=0)),
                call_slots=64, call_slots_in_use=3, has_dialog=True, ari_connected=True, redis_connected=True,
                draining=False),
    m.UtteranceReady(utterance_id="c1-0002", call_id="c1", slot=3, generation=7, start_sample=48000,
                     end_sample=64000, eos_at=5.0, context="Oui, je suis propriétaire.", dialog_state="ask_owner"),
    m.StreamedUtterance(utterance_id="c1-0002", node="media-a", call_id="c1", eos_at=5.0,
                        audio=b"\x01\x00\xff\xff", language="fr", context="Oui.", dialog_state="ask_owner",
                        sent_at=5.01),
]


def test_every_message_type_has_an_example() -> None:
    assert {type(e) for e in EXAMPLES} == set(m.MESSAGE_TYPES)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(message: m.Message) -> None:
    decoded = m.decode(m.encode(message))
    assert decoded == message and type(decoded) is type(message)


def test_encoding_is_compact() -> None:
    # An UtteranceReady is sent per utterance; it carries a sample range, not audio.
    assert len(m.encode(EXAMPLES[4])) < 80


def test_unknown_type_is_rejected() -> None:
    payload = msgspec.msgpack.encode(["Teleport", "c1"])
    with pytest.raises(m.MessageError, match="Invalid value 'Teleport'"):
        m.decode(payload)


def test_bad_field_type_is_rejected() -> None:
    payload = msgspec.msgpack.encode(["UtteranceReady", "u1", "c1", "three", 7, 0, 10, 1.0, ""])
    with pytest.raises(m.MessageError, match=r"Expected `int`, got `str` - at `\$\[3\]`"):
        m.decode(payload)


def test_missing_fields_and_garbage_are_rejected() -> None:
    with pytest.raises(m.MessageError, match="Expected `array` of at least length 8"):
        m.decode(msgspec.msgpack.encode(["UtteranceReady", "u1"]))
    with pytest.raises(m.MessageError, match="rejected message"):
        m.decode(b"\xc1\xff not msgpack")
    with pytest.raises(m.MessageError, match="Invalid enum value 'shout'"):
        m.decode(msgspec.msgpack.encode(["ListenMode", "c1", "shout"]))
