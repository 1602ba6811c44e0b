"""The embedded PBX: the ARI simulator with media, and simulated callers that follow scenarios.

Media as Asterisk's externalMedia does it (../shared/ari/FACTS.md): once an externalMedia channel
shares a bridge with a `spy=in` snoop of a caller, what that caller says goes out as slin16 RTP
(payload type 118, 640-byte payloads, big-endian, +1 sequence, +320 timestamp, first timestamp 320,
random SSRC and first sequence) from the externalMedia channel's own UDP port to its
external_host, every 20 ms in real time, with all-zero payloads while the caller is silent.
Prompts play for their real duration: the simulator finds each `sound:` in its sounds directory as
Asterisk would (the files `rtcore prompts install` wrote) and plays it as long as that file lasts; a
stopped prompt stops at once.

Each caller hears the bot's prompts (playback events of its channel) and, when a question it
has a response for has played to its end, answers after a human-like pause: phrasebook audio,
DTMF, a sentence of real speech, or silence. A barge-in caller talks over a chosen prompt.

A caller the bot does not take (admission control, a drain) sees it as a real one would: handed
back to the dialplan (ARI continue), which hangs up without the call being answered, or answered
with the busy prompt then hung up. It is counted `refused` and the next call replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile

from rtcore.sim.ari import AriSimulator, MediaHooks, StasisAppNotRegistered
from rtcore.sim.ari.state import Bridge, Channel, LiveRecording, Playback
from rtcore.sim.callers.phrasebook import ANSWERS_BY_KEY, Clip
from rtcore.sim.callers.scenarios import Scenario, ScenarioRun, intended_lead, pick_scenario
from rtcore.sim.telephony import CallerCodec, telephone_band

log = logging.getLogger(__name__)

PACKET_SAMPLES = 320
PAYLOAD_TYPE = 118
TICK_S = 0.2  # how often run_load tops the calls in progress back up
REFUSAL_PROMPTS = ("busy_refused",)  # what the bot says to a caller it does not take (admission.busy)
RTP_HEADER = struct.Struct("!BBHII")


@dataclass
class SimulatedCall:
    channel_id: str
    scenario: ScenarioRun
    started_at: float
    speech: deque[npt.NDArray[np.int16]] = field(default_factory=deque)  # packets still to say
    rtp: tuple[socket.socket, tuple[str, int]] | None = None
    seq: int = 0
    timestamp: int = PACKET_SAMPLES
    ssrc: int = 0
    playing: set[str] = field(default_factory=set)  # prompt playbacks in progress
    pending: asyncio.Task[Any] | None = None  # the answer being prepared
    answers: list[str] = field(default_factory=list)  # the phrasebook answers said, in order
    typed: str = ""  # DTMF digits typed
    said: list[np.ndarray] = field(default_factory=list)  # everything sent, for the recording
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    channel: Channel | None = None  # the simulator's, still readable once it is gone
    told_busy: bool = False  # heard the bot's refusal prompt

    @property
    def refused(self) -> bool:
        """The bot did not take the call: handed back to the dialplan unanswered, or told it is busy."""
        return self.told_busy or (self.channel is not None and self.channel.continued)


class CallerMedia(MediaHooks):
    """MediaHooks with real audio: callers hear the prompts (for as long as the file the simulator picked
    lasts, or `prompt_seconds(media_uri)` without a sounds directory), RTP goes out of snoops."""

    def __init__(self, recordings_dir: Path | None, prompt_seconds: Callable[[str], float] | None = None) -> None:
        super().__init__(prompt_seconds)
        self.pbx: CallerPbx | None = None
        self.recordings_dir = recordings_dir

    async def play_media(self, target: Any, playback: Playback, media_uri: str) -> None:
        call = self.pbx.calls.get(getattr(target, "id", "")) if self.pbx else None
        if call is None:
            await super().play_media(target, playback, media_uri)
            return
        call.playing.add(playback.id)
        assert self.pbx is not None
        self.pbx.prompt_started(call, media_uri)
        try:
            await super().play_media(target, playback, media_uri)
        except asyncio.CancelledError:
            call.playing.discard(playback.id)
            raise
        call.playing.discard(playback.id)
        assert self.pbx is not None
        self.pbx.prompt_played(call, media_uri)

    async def channel_entered_bridge(self, channel: Channel, bridge: Bridge) -> None:
        if self.pbx is not None:
            self.pbx.link_media(bridge)

    async def recording_finished(self, recording: LiveRecording) -> None:
        if self.pbx is None or self.recordings_dir is None:
            return
        target = recording.target_uri.split(":", 1)[1] if ":" in recording.target_uri else ""
        call = self.pbx.calls.get(self.pbx.snoop_owner.get(target, target))
        if call is not None and call.said:
            self.recordings_dir.mkdir(parents=True, exist_ok=True)
            soundfile.write(str(self.recordings_dir / f"{recording.name}.wav"), np.concatenate(call.said), 16000)


class CallerPbx:
    def __init__(self, sim: AriSimulator, media: CallerMedia, phrasebook: dict[str, list[Clip]],
                 human_clips: list[npt.NDArray[np.int16]], seed: int = 1, codec: CallerCodec = "ulaw",
                 scenarios: tuple[str, ...] = (), on_call_end: Callable[[dict[str, Any]], None] | None = None) -> None:
        """`codec`: how callers reach the PBX (telephony.py); `scenarios`: the ones to pick from (empty:
        all); `on_call_end` gets each finished call's scenario and the lead it should have given."""
        self.sim = sim
        self.codec: CallerCodec = codec
        self.scenarios = scenarios
        self.on_call_end = on_call_end
        self.media = media
        media.pbx = self
        self.phrasebook = phrasebook
        self.human_clips = human_clips
        self.rng = random.Random(seed)
        self.calls: dict[str, SimulatedCall] = {}
        self.snoop_owner: dict[str, str] = {}  # snoop channel id -> caller channel id
        self.placed = 0
        self.finished = 0
        self.declined = 0  # placements Asterisk declined: no application registered
        self.refused = 0  # calls the bot did not take (SimulatedCall.refused)
        self.outcomes_expected: dict[str, str] = {}
        self._sender: asyncio.Task[None] | None = None

    # --- calls ----------------------------------------------------------------------------------
    async def place_call(self, scenario: Scenario | None = None) -> SimulatedCall:
        if scenario is None and self.scenarios:  # the given scenarios in turn: even counts for a benchmark
            name = self.scenarios[self.placed % len(self.scenarios)]
            scenario = pick_scenario(self.rng, bool(self.human_clips), (name,))
        scenario = scenario or pick_scenario(self.rng, bool(self.human_clips))
        number = f"06{self.rng.randrange(10**8):08d}"
        native = "slin16" if self.codec == "slin16" else self.codec
        channel_id = await self.sim.place_call(caller_number=number, native_format=native)
        call = SimulatedCall(channel_id, ScenarioRun(scenario), time.monotonic(),
                             ssrc=self.rng.getrandbits(32), seq=self.rng.getrandbits(16),
                             channel=self.sim.channel(channel_id))
        self.calls[channel_id] = call
        self.placed += 1
        self.outcomes_expected[channel_id] = scenario.outcome
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_rtp(), name="sim-rtp")
        return call

    def call_gone(self, channel_id: str) -> None:
        call = self.calls.pop(channel_id, None)
        if call is not None:
            if call.pending is not None:
                call.pending.cancel()
            call.ended.set()
            self.finished += 1
            self.refused += call.refused
            if self.on_call_end is not None:
                scenario = call.scenario.scenario
                self.on_call_end({"call_id": channel_id, "scenario": scenario.name, "answers": call.answers,
                                  "typed": call.typed, "refused": call.refused,
                                  "intended": intended_lead(scenario.outcome, call.answers, call.typed)})

    def link_media(self, bridge: Bridge) -> None:
        """A bridge holding an externalMedia channel and a spy=in snoop: the caller's voice goes there."""
        members = [self.sim.channel(cid) for cid in bridge.channel_ids]
        media = next((c for c in members if c is not None and c.media is not None and c.media.local_socket), None)
        snoop = next((c for c in members if c is not None and c.snoop_target_id and c.spy in ("in", "both")), None)
        if media is None or snoop is None or media.media is None:
            return
        call = self.calls.get(snoop.snoop_target_id or "")
        if call is None or call.rtp is not None:
            return
        host, _, port = media.media.external_host.rpartition(":")
        assert media.media.local_socket is not None
        call.rtp = (media.media.local_socket, (host, int(port)))
        self.snoop_owner[snoop.id] = call.channel_id

    # --- listening and answering -----------------------------------------------------------------
    def prompt_played(self, call: SimulatedCall, media_uri: str) -> None:
        """A prompt played to its end on the caller's channel: answer it if it is ours to answer."""
        prompt = media_uri.split("/")[-1]
        if call.playing or call.pending is not None:
            return  # more is being said, or we are already answering
        response = call.scenario.response(prompt)
        if response is not None:
            call.pending = asyncio.get_running_loop().create_task(self._answer(call, response, pause=True))

    def prompt_started(self, call: SimulatedCall, media_uri: str) -> None:
        if media_uri.split("/")[-1] in REFUSAL_PROMPTS:
            call.told_busy = True
            return
        scenario = call.scenario.scenario
        if scenario.barge_in and media_uri.endswith("/" + scenario.barge_in) and call.pending is None:
            response = call.scenario.response(scenario.barge_in)
            if response is not None:
                call.pending = asyncio.get_running_loop().create_task(
                    self._answer(call, response, pause=False, delay=scenario.barge_in_after_s))

    async def _answer(self, call: SimulatedCall, response: str, pause: bool, delay: float = 0.0) -> None:
        try:
            await asyncio.sleep(delay if not pause else self.rng.uniform(0.3, 0.8))
            kind, _, value = response.partition(":")
            if kind == "dtmf":
                await self._type(call, value)
            elif kind == "say":
                clip = self._clip_for(value)
                if clip is None:
                    fallback = ANSWERS_BY_KEY[value].slots if value in ANSWERS_BY_KEY else ()
                    zip_code = dict(fallback).get("zip_code")
                    if zip_code:  # no spoken variant was understood: type it, as callers do
                        await self._type(call, str(zip_code))
                else:
                    call.answers.append(clip.answer)
                    self._speak(call, clip.load())
            elif kind == "human" and self.human_clips:
                self._speak(call, self.rng.choice(self.human_clips))
        finally:
            call.pending = None

    async def _type(self, call: SimulatedCall, digits: str) -> None:
        call.typed += digits
        for digit in digits:
            await self.sim.send_dtmf(call.channel_id, digit, duration_ms=120)
            await asyncio.sleep(0.25)

    def _clip_for(self, answer: str) -> Clip | None:
        """A kept variant of `answer`, else of another answer with the same meaning here (another
        heating, another callback slot: what is said is recorded, so the lead it should give is known)."""
        clips = list(self.phrasebook.get(answer) or [])
        want = ANSWERS_BY_KEY.get(answer)
        if not clips and want is not None:
            clips = [c for key, cs in self.phrasebook.items() if key in ANSWERS_BY_KEY
                     and ANSWERS_BY_KEY[key].intent == want.intent and ANSWERS_BY_KEY[key].state == want.state
                     for c in cs]
        return self.rng.choice(clips) if clips else None

    def _speak(self, call: SimulatedCall, audio: npt.NDArray[np.int16]) -> None:
        audio = telephone_band(audio, self.codec)  # what the phone network leaves of the voice
        padded = np.zeros(-(-len(audio) // PACKET_SAMPLES) * PACKET_SAMPLES, dtype=np.int16)
        padded[:len(audio)] = audio
        call.speech.extend(padded.reshape(-1, PACKET_SAMPLES))

    # --- RTP --------------------------------------------------------------------------------------
    async def _send_rtp(self) -> None:
        """One loop for every call: a packet per call every 20 ms, paced on the monotonic clock."""
        loop = asyncio.get_running_loop()
        silence = np.zeros(PACKET_SAMPLES, dtype=np.int16)
        next_at = loop.time()
        while True:
            for call in list(self.calls.values()):
                if call.rtp is None:
                    continue
                samples = call.speech.popleft() if call.speech else silence
                header = RTP_HEADER.pack(0x80, PAYLOAD_TYPE, call.seq, call.timestamp, call.ssrc)
                sock, target = call.rtp
                try:
                    sock.sendto(header + samples.astype(">i2").tobytes(), target)
                except OSError:
                    call.rtp = None  # the channel's socket closed (hung up)
                    continue
                call.said.append(samples)
                call.seq = (call.seq + 1) & 0xFFFF
                call.timestamp = (call.timestamp + PACKET_SAMPLES) & 0xFFFFFFFF
            next_at += 0.02
            delay = next_at - loop.time()
            if delay < -0.2:  # fell far behind (a stall): resume from now rather than burst
                next_at = loop.time()
            await asyncio.sleep(max(0.0, delay))

    def reap(self) -> list[str]:
        """Forget the calls whose caller channel is gone (the bot hung up); returns their ids."""
        gone = [cid for cid in self.calls if self.sim.channel(cid) is None]
        for cid in gone:
            self.call_gone(cid)
        return gone

    async def run_load(self, concurrent: int, total: int = 0, duration_s: float = 0.0,
                       grace_s: float = 180.0) -> None:
        """Keep `concurrent` calls in progress (a finished call is replaced) until `total` calls
        were placed or `duration_s` passed (0: no limit), then let the calls in progress finish
        (at most `grace_s`; the rest are hung up by their callers)."""
        loop = asyncio.get_running_loop()
        started = loop.time()

        def more() -> bool:
            return (not total or self.placed < total) and (not duration_s or loop.time() - started < duration_s)

        # The first calls arrive spread over `ramp_s`, not all in the same instant (which no
        # call centre sees, and which would make every caller answer at once, in lockstep).
        ramp_s = min(10.0, 0.5 * concurrent)
        # Placements are capped at `concurrent` calls per 10 s (a call lasts over a minute): calls
        # refused at once (no slot, a dead pipeline) must not become a storm of failed calls.
        per_tick = max(1, math.ceil(concurrent * TICK_S / 10.0))
        while more():
            self.reap()
            allowed = concurrent if loop.time() - started >= ramp_s else \
                max(1, int(concurrent * (loop.time() - started) / ramp_s) + 1)
            for _ in range(min(concurrent, allowed, len(self.calls) + per_tick) - len(self.calls)):
                if not more():
                    break
                try:
                    await self.place_call()
                except StasisAppNotRegistered:
                    # Nobody holds the application (the dialog is restarting): Asterisk declines
                    # the call (603). The caller tries again at the next tick.
                    self.declined += 1
                    break
            await asyncio.sleep(TICK_S)
        deadline = loop.time() + grace_s
        while self.calls and loop.time() < deadline:
            self.reap()
            await asyncio.sleep(0.2)
        for cid in list(self.calls):
            if self.sim.channel(cid) is not None:
                await self.sim.hangup(cid)
            self.call_gone(cid)

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()


def load_human_clips(audio_dir: Path, max_clips: int = 40) -> list[npt.NDArray[np.int16]]:
    """Sentences of real French speech (the OSR recordings cut by the VAD), if ../shared is there."""
    from rtcore.runtime.audio import float_to_pcm16, load_audio
    from rtcore.vad.segmenter import SegmenterOptions, segment_streams
    from rtcore.vad.silero import BatchedVad, SileroVad

    files = sorted(audio_dir.glob("OSR_fr_*.wav"))[:2] if audio_dir.is_dir() else []
    if not files:
        return []
    audios = [load_audio(f) for f in files]
    spans = segment_streams(audios, SegmenterOptions(), BatchedVad(SileroVad()))
    clips = [float_to_pcm16(a[u.start:u.end]) for a, us in zip(audios, spans, strict=True) for u in us]
    return clips[:max_clips]
