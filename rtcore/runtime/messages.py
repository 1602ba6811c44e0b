"""Every message that crosses a process boundary, and its encoding.

Messages are msgspec Structs encoded as MessagePack arrays with a leading tag (the class name), so
the field order is generated, not hand-written, and an unknown tag or a field of the wrong type is
rejected by the decoder. Audio never travels here: messages name sample ranges in the shared rings.

Times are `time.time()` seconds (wall clock, comparable across processes); durations are ms.
"""

from __future__ import annotations

from typing import Literal

import msgspec

# The call id of the HTTP API's utterances: not a caller's, so not in the calls' latencies.
HTTP_CALL_ID = "http"


class Message(msgspec.Struct, tag=True, array_like=True, frozen=True, forbid_unknown_fields=True):
    """Base of every bus message; the tag is the class name."""


# --- call lifecycle (dialog/ARI control -> capture, VAD, ASR, supervisor) ---------------------
class CallStarted(Message, frozen=True):
    """Dialog/ARI control -> all: a call has a ring slot; RTP from `rtp_source` goes into it."""

    call_id: str
    slot: int
    generation: int
    caller: str = ""
    rtp_source: str = ""  # "host:port" Asterisk sends this call's RTP from, if known yet
    started_at: float = 0.0


class CallEnded(Message, frozen=True):
    """Dialog/ARI control -> all: the call is over; readers finish up and forget the slot."""

    call_id: str
    slot: int
    generation: int
    reason: str = ""
    ended_at: float = 0.0


class ListenMode(Message, frozen=True):
    """Dialog -> VAD: "ignore" while the bot speaks on a call whose policy is to ignore the caller
    meanwhile (the seed's behaviour); "listen" otherwise. A call with the barge-in policy stays in
    "listen" while the bot speaks, and the dialog stops the prompt on SpeechStarted."""

    call_id: str
    mode: Literal["listen", "ignore"]


class CallContext(Message, frozen=True):
    """Dialog -> VAD: what the caller is expected to say next (the script's `asr_context` of the
    call's dialog state), sent when it changes; the VAD stamps it on the call's UtteranceReady so
    the ASR can give it to Whisper. Empty: nothing in particular."""

    call_id: str
    context: str
    state: str = ""  # the dialog state it belongs to (stamped on the utterances, for the ASR's records)


# --- audio path (VAD -> ASR, dialog) ---------------------------------------------------------
class SpeechStarted(Message, frozen=True):
    """VAD -> dialog: the caller started speaking (used for barge-in)."""

    call_id: str
    slot: int
    generation: int
    start_sample: int
    at: float


class UtteranceReady(Message, frozen=True):
    """VAD -> ASR workers: an utterance is complete in the ring, samples [start_sample, end_sample)."""

    utterance_id: str
    call_id: str
    slot: int
    generation: int
    start_sample: int
    end_sample: int
    eos_at: float  # when the VAD cut it: latencies are measured from here
    language: str = ""  # empty: the ASR default (asr_language); the HTTP API may ask for another
    context: str = ""  # what the caller is expected to say (CallContext): Whisper's previous text
    dialog_state: str = ""  # the call's dialog state (CallContext) when it was cut


class StreamedUtterance(Message, frozen=True):
    """Media node -> ASR nodes, on the cluster's Redis stream (rtcore.runtime.cluster): an
    utterance with its audio, since another machine cannot read this one's rings. The only message
    that carries audio: 16-bit little-endian PCM, mono, 16 kHz. Its transcript goes to the stream
    of `node`, the media node that owns the call, under the same `utterance_id`."""

    utterance_id: str  # as in UtteranceReady: unique within its node
    node: str
    call_id: str
    eos_at: float
    audio: bytes
    language: str = ""
    context: str = ""
    dialog_state: str = ""  # the call's dialog state when it was cut (for the ASR's logs and metrics)
    sent_at: float = 0.0  # when the media node put it on the stream


class Transcript(Message, frozen=True):
    """ASR worker -> dialog: the text of one utterance (exactly one per utterance id)."""

    utterance_id: str
    call_id: str
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    hallucination: bool = False  # flagged outputs carry their text for the record but are not speech
    error: str = ""  # non-empty: no text could be produced (e.g. ring overrun)
    eos_at: float = 0.0
    queue_ms: float = 0.0
    features_ms: float = 0.0
    inference_ms: float = 0.0
    batch_size: int = 0
    worker: str = ""
    published_at: float = 0.0  # when the dispatcher published it: eos_to_transcript = published_at - eos_at
    window_s: float = 0.0  # the encoder window its batch was padded to


class AsrCredit(Message, frozen=True):
    """ASR worker -> ASR dispatcher (its own channel, not the bus): "I can hold `capacity`
    utterances at once" (the dispatcher sends capacity minus what it has in flight there). Sent
    after each batch and every second as a keep-alive; a worker silent for long, or back under a
    new pid, has its in-flight utterances re-queued. `holding`: the utterance ids the worker has
    (queued or running), so that a restarted dispatcher knows what is in flight where."""

    worker: str
    pid: int
    capacity: int
    holding: tuple[str, ...] = ()


class AsrStatus(Message, frozen=True):
    """ASR dispatcher -> all, every half second. A new (pid, started_at) is a restarted dispatcher:
    whoever submitted utterances that have no transcript yet submits them again (its queue died with
    it). The load figures drive admission control: a new call is refused while `expected_wait_ms`
    (the p90 of what recent transcripts waited before their batch ran, or the oldest queued
    utterance's wait if longer) breaks the latency target."""

    pid: int
    started_at: float
    pending: int
    in_flight: int
    workers: int
    capacity: int  # utterances the workers can hold at once
    throughput: float  # transcripts per second over the last few seconds
    expected_wait_ms: float
    queue_limit: int
    refused_full: int  # utterances answered with an error because the queue was at its limit


class CallView(Message, frozen=True):
    """Dialog -> observers (the live view): a call as ops see it, sent when it changes (a turn, its
    end) and again for every call in progress when the HTTP service (re)starts. Carries what the
    caller said: the live view that shows it is behind the HTTP service's access rules."""

    call_id: str
    state: str  # the dialog state; "ended" once over
    started_at: float
    turns: int = 0
    last_transcript: str = ""
    last_intent: str = ""
    last_turn_ms: float = 0.0  # eos -> reply of the last turn
    ended_at: float = 0.0
    outcome: str = ""


class TurnTaken(Message, frozen=True):
    """Dialog -> observers (launch report, load bench): the bot answered a caller's utterance."""

    call_id: str
    utterance_id: str
    intent: str
    eos_to_transcript_ms: float
    eos_to_reply_ms: float


# --- playback (dialog -> ARI control) --------------------------------------------------------
class Play(Message, frozen=True):
    """Dialog -> ARI control: play a prompt to the caller."""

    call_id: str
    playback_id: str
    media: str  # ARI media URI, e.g. "sound:rtcore/ask_zip_code"


class StopPlayback(Message, frozen=True):
    """Dialog -> ARI control: stop a playback (barge-in)."""

    call_id: str
    playback_id: str


# --- run control (supervisor -> all, on the bus) ----------------------------------------------
class ProcessStarted(Message, frozen=True):
    """Supervisor -> all: a child reported ready (`restarts` > 0: it was restarted). The dialog
    announces the calls in progress at once when the RTP capture or the VAD comes back."""

    process: str
    pid: int
    restarts: int


class Drain(Message, frozen=True):
    """Supervisor (SIGTERM, `rtcore drain`) -> dialog: take no new call (refused as
    `admission_refuse` says), let the calls in progress finish for `timeout_s`, then end the rest
    politely. Repeated until the dialog reports it is draining."""

    timeout_s: float
    requested_at: float


class ProcessState(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One child in a RunStatus."""

    name: str
    pid: int
    up: bool  # running and ready
    heartbeat_age_s: float
    restarts: int
    cpu_percent: float  # of one core, over the last status interval
    rss_bytes: int


class RunStatus(Message, frozen=True):
    """Supervisor -> all, every second: what /health, /ready and the live view report. The ARI,
    Redis and draining flags are the dialog's own reports (False without a dialog process)."""

    sent_at: float
    processes: tuple[ProcessState, ...]
    call_slots: int
    call_slots_in_use: int
    has_dialog: bool
    ari_connected: bool
    redis_connected: bool
    draining: bool


# --- supervision (children -> supervisor, on the control channel) ----------------------------
class ProcessReady(Message, frozen=True):
    """Child -> supervisor: initialisation done (models loaded, sockets connected)."""

    process: str
    pid: int


class ProcessFailed(Message, frozen=True):
    """Child -> supervisor: initialisation failed; `error` says why. The child then exits."""

    process: str
    pid: int
    error: str


class Heartbeat(Message, frozen=True):
    """Child -> supervisor, every heartbeat interval, from the child's own work loop."""

    process: str
    pid: int
    seq: int
    sent_at: float


class Metrics(Message, frozen=True):
    """Child -> supervisor: the child's own figures for the supervisor's decisions (drain, the
    reports of `rtcore bench chaos`). Prometheus metrics travel another way (rtcore.runtime.telemetry)."""

    process: str
    values: dict[str, float]


MESSAGE_TYPES: tuple[type[Message], ...] = (
    CallStarted, CallEnded, ListenMode, CallContext, SpeechStarted, UtteranceReady, StreamedUtterance, Transcript,
    AsrCredit, AsrStatus, CallView, TurnTaken, Play, StopPlayback, ProcessStarted, Drain, RunStatus, ProcessReady,
    ProcessFailed, Heartbeat, Metrics,
)
AnyMessage = (CallStarted | CallEnded | ListenMode | CallContext | SpeechStarted | UtteranceReady
              | StreamedUtterance | Transcript
              | AsrCredit | AsrStatus | CallView | TurnTaken | Play | StopPlayback | ProcessStarted | Drain
              | RunStatus | ProcessReady | ProcessFailed | Heartbeat | Metrics)


class MessageError(ValueError):
    """A payload that is not a valid message: unknown type, bad shape or bad field value."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(payload: bytes) -> AnyMessage:
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MessageError(f"rejected message: {exc}") from None


def topic(message_type: type[Message]) -> bytes:
    """The ZeroMQ topic frame of a message type (subscribers filter on it)."""
    return message_type.__name__.encode()
