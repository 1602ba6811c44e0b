"""What the HTTP API asks of the ASR: a `Transcriber`, and the real one over the shared pipeline.

`PipelineTranscriber` writes a request's audio into a ring slot of its own (allocated as
`SlotOwner.HTTP`), submits an UtteranceReady for it to the ASR dispatcher exactly as the VAD does for
a call, and waits for the Transcript with that utterance id on the bus: HTTP requests and calls share
the workers and are batched together. Its errors carry the HTTP status the API answers with.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import zmq

from rtcore.runtime.audio import SAMPLE_RATE, float_to_pcm16
from rtcore.runtime.bus import AsrClient, Publisher, Subscriber
from rtcore.runtime.config import Settings
from rtcore.runtime.messages import HTTP_CALL_ID, AsrStatus, Transcript, UtteranceReady
from rtcore.runtime.models import whisper_model_name
from rtcore.runtime.ring import AudioRings, NoFreeSlotError, SlotOwner

log = logging.getLogger(__name__)

# HTTP utterances are told apart from calls' on the bus by this call id and utterance id prefix.
UTTERANCE_PREFIX = "http-"
# Transcripts are read when the bus socket signals, and also at this period: a ZeroMQ FD is
# edge-triggered, and an edge that fires between two reads is otherwise never seen again.
DRAIN_PERIOD_S = 0.1
PROBE_PERIOD_S = 0.05


# --- errors ----------------------------------------------------------------------------------
class ApiError(Exception):
    """A request that cannot be answered with a transcript: its HTTP status and a message for the client."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status = 400


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMedia(ApiError):
    status = 415


class TranscriptionFailed(ApiError):
    """The ASR produced an error transcript (e.g. its audio was overwritten)."""

    status = 500


class ServiceBusy(ApiError):
    """No ring slot free: every slot holds a call or another request."""

    status = 503


class TranscriptionTimeout(ApiError):
    status = 504


# --- the transcriber interface ---------------------------------------------------------------
@dataclass(frozen=True)
class TranscriptionResult:
    text: str  # empty when Whisper's output was flagged as a hallucination
    processing_time: float  # seconds from submission to transcript
    batch_size: int = 1  # how many utterances shared the Whisper batch
    hallucination: bool = False


class Transcriber(Protocol):
    """What the HTTP API needs from an ASR: the pipeline in production, a fake in tests."""

    async def transcribe(self, audio: npt.NDArray[np.float32], language: str) -> TranscriptionResult:
        """16 kHz mono float32 -> its text; raises ApiError (503, 500, 504) when it cannot."""
        ...

    def health(self) -> dict[str, Any]:
        """Extra fields for GET /health."""
        ...


def model_name(settings: Settings) -> str:
    return whisper_model_name(settings)


def check_audio_fits(settings: Settings, ring_capacity: int) -> None:
    """An upload is written into one ring slot at once, so the longest one must fit in a slot."""
    if settings.http_max_audio_s * settings.sample_rate > ring_capacity:
        raise ValueError(
            f"http_max_audio_s ({settings.http_max_audio_s:g} s) is longer than a ring slot "
            f"({ring_capacity / settings.sample_rate:g} s, ring_seconds): lower http_max_audio_s "
            f"or raise ring_seconds")


# --- the real transcriber: rings + ASR dispatcher + bus ----------------------------------------
class PipelineTranscriber:
    """Transcribes through the run's ASR dispatcher and workers. Owns its sockets; the rings
    are the caller's. Use from one event loop: `await start()`, then `transcribe()`, `close()`."""

    def __init__(self, settings: Settings, rings: AudioRings) -> None:
        check_audio_fits(settings, rings.spec.capacity)
        self.settings = settings
        self.rings = rings
        self._asr = AsrClient(settings.endpoint("asr"))
        # AsrStatus too: a restarted dispatcher gets our requests in progress again (AsrClient).
        self._transcripts = Subscriber(settings.endpoint("bus_sub"), [Transcript, AsrStatus])
        self._waiting: dict[str, asyncio.Future[Transcript]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._drainer: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start reading transcripts, and return once our subscription is live at the forwarder:
        a Transcript published before that would be dropped, and its request would time out."""
        self._loop = asyncio.get_running_loop()
        self._fd = int(self._transcripts.socket.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._drain)
        self._drainer = asyncio.create_task(self._drain_periodically(), name="transcript-drain")
        probe_id = f"{UTTERANCE_PREFIX}subscription-probe-{uuid.uuid4().hex}"
        probe = Transcript(utterance_id=probe_id, call_id=HTTP_CALL_ID, text="", error="subscription probe")
        arrived = self._expect(probe_id)
        publisher = Publisher(self.settings.endpoint("bus_pub"))
        try:
            deadline = time.monotonic() + timeout_s
            while not arrived.done():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no message came back through the bus within {timeout_s:g} s")
                publisher.publish(probe)
                await asyncio.wait([arrived], timeout=PROBE_PERIOD_S)
        finally:
            self._waiting.pop(probe_id, None)
            publisher.close()

    async def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            try:
                await self._drainer
            except asyncio.CancelledError:
                pass
            self._drainer = None
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._fd = -1
        for future in self._waiting.values():
            future.cancel()
        self._asr.close()
        self._transcripts.close()

    def release_leftover_slots(self) -> int:
        """Free the slots an earlier HTTP API process held when it died: its requests died with it."""
        leftovers = self.rings.in_use(SlotOwner.HTTP)
        for lease in leftovers:
            self.rings.free(lease)
        if leftovers:
            log.warning("freed %d audio slots held by a previous HTTP API process", len(leftovers))
        return len(leftovers)

    def health(self) -> dict[str, Any]:
        return {"free_slots": self.rings.spec.n_slots - len(self.rings.in_use())}

    async def transcribe(self, audio: npt.NDArray[np.float32], language: str) -> TranscriptionResult:
        n = int(audio.shape[0])
        if n > self.rings.spec.capacity:  # the app checks the limit first; this guards the ring
            raise PayloadTooLarge(f"audio of {n / SAMPLE_RATE:.1f} s does not fit in a ring slot")
        try:
            lease = self.rings.allocate(SlotOwner.HTTP)
        except NoFreeSlotError:
            raise ServiceBusy(f"all {self.rings.spec.n_slots} audio slots are in use (calls and "
                              "transcriptions); retry later") from None
        utterance_id = f"{UTTERANCE_PREFIX}{uuid.uuid4().hex}"
        arrived = self._expect(utterance_id)
        submitted = time.monotonic()
        try:
            self.rings.write(lease, float_to_pcm16(audio))
            self._asr.submit(UtteranceReady(
                utterance_id=utterance_id, call_id=HTTP_CALL_ID, slot=lease.slot, generation=lease.generation,
                start_sample=0, end_sample=n, eos_at=time.time(), language=language))
            self._drain()
            try:
                transcript = await asyncio.wait_for(arrived, self.settings.http_request_timeout_s)
            except TimeoutError:
                raise TranscriptionTimeout(
                    f"no transcript within {self.settings.http_request_timeout_s:g} s "
                    "(http_request_timeout_s)") from None
        finally:
            self._waiting.pop(utterance_id, None)
            self._asr.settled(utterance_id)  # answered or given up: never to be submitted again
            # Freeing also bumps the generation: a worker that reads the slot later gets an error, not other audio.
            self.rings.free(lease)
        if transcript.error:
            raise TranscriptionFailed(f"transcription failed: {transcript.error}")
        text = transcript.text
        if transcript.hallucination:
            # What Whisper heard is the caller's data: the text only at DEBUG.
            log.info("%s: Whisper output flagged as a hallucination, returned as empty", utterance_id)
            log.debug("%s: the flagged output: %r", utterance_id, text)
            text = ""
        return TranscriptionResult(text=text, processing_time=time.monotonic() - submitted,
                                   batch_size=transcript.batch_size, hallucination=transcript.hallucination)

    def _expect(self, utterance_id: str) -> asyncio.Future[Transcript]:
        assert self._loop is not None, "start() first"
        future: asyncio.Future[Transcript] = self._loop.create_future()
        self._waiting[utterance_id] = future
        return future

    def _drain(self) -> None:
        # Every Transcript of the run passes here (calls' too): keep only ours, once.
        for message in self._transcripts.drain():
            if isinstance(message, AsrStatus):
                self._asr.dispatcher_seen(message)
                continue
            if not isinstance(message, Transcript):
                continue
            self._asr.settled(message.utterance_id)
            future = self._waiting.pop(message.utterance_id, None)
            if future is not None and not future.done():
                future.set_result(message)

    async def _drain_periodically(self) -> None:
        while True:
            await asyncio.sleep(DRAIN_PERIOD_S)
            self._drain()


# --- decoding uploads --------------------------------------------------------------------------
