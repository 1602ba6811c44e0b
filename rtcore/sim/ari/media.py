"""Playbacks and recordings: each channel's (or bridge's) command queue, and the hooks where media happens.

Asterisk runs a channel's `/play` and `/record` commands one at a time on the channel's control thread,
so they share one FIFO (a second record on a channel starts only when the first stops, as a second
play waits for the first). Observed on Asterisk 22.10.1 and read in res_stasis_playback.c:
- A play that finds the queue idle starts at once: PlaybackStarted may precede the 201 reply, and the
  reply then says `playing`; behind another it says `queued`.
- Media lists: PlaybackStarted → (PlaybackContinuing, PlaybackStarted) per further item → PlaybackFinished.
- DELETE of the playing playback → PlaybackFinished `done` (there is no "stopped" state); of a queued
  one → 204, it reads `done` and gets PlaybackFinished `done` without a PlaybackStarted when its turn
  comes. Only sound:, recording: and tone: are stoppable (number:/digits:/characters: → 500).
- `sound:` of a missing file, or of one Asterisk cannot open (sounds.py: a 16 kHz `.wav`) → PlaybackStarted
  then PlaybackFinished `failed` (`PlaybackContinuing` and the next item when it was not the last: a
  failed item of a list counts as played, as res_stasis_playback's playback_final_update() does). With a
  sounds directory, a `sound:` item lasts as long as the file Asterisk would pick. An unsupported scheme
  (`foo:bar`), a missing `recording:` or a bad `number:` → PlaybackStarted and nothing more: the
  playback is dropped and the queue moves on.
- The target hanging up: the playing playback → PlaybackFinished `failed` (streamfile was interrupted),
  the recording → RecordingFinished `done` (file kept), queued commands are flushed without events.

`MediaHooks` is the seam for real media: `play_media` is awaited for each media item (cancelled when
the playback is stopped or its target goes away; an exception fails the playback); the other hooks
are notifications, run as tasks after the events they follow.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from rtcore.sim.ari.events import EventHub
from rtcore.sim.ari.sounds import SoundLibrary
from rtcore.sim.ari.state import (
    Bridge,
    Channel,
    LiveRecording,
    Playback,
    PlaybackState,
    RecordingState,
    StoredRecording,
)
from rtcore.sim.ari.swagger import AriError

log = logging.getLogger(__name__)

Target = Channel | Bridge
DEFAULT_MEDIA_SECONDS = 1.0  # the traces' prompt (sound:voicebot-test) lasted 1.0 s
STOPPABLE_SCHEMES = ("sound:", "recording:", "tone:")


def default_playback_duration(media_uri: str) -> float:
    """1 s per media item; a tone plays until stopped, as Asterisk's tone: does."""
    return math.inf if media_uri.startswith("tone:") else DEFAULT_MEDIA_SECONDS


class MediaCheck(enum.Enum):
    PLAYABLE = "playable"
    MISSING = "missing"  # the file is not there: PlaybackFinished failed
    UNPLAYABLE = "unplayable"  # Asterisk logs an error and silently drops the playback


@dataclass(eq=False, slots=True)
class ForcedFailure:
    """AriSimulator.fail_playbacks(): media items matching `match` fail, `left` more times."""

    match: Callable[[str], bool]
    left: int


class MediaHooks:
    """Where the simulated PBX's media happens. This default only keeps time; subclass it for real audio."""

    def __init__(self, playback_duration: Callable[[str], float] | None = None) -> None:
        self.playback_duration = playback_duration or default_playback_duration

    async def play_media(self, target: Target, playback: Playback, media_uri: str) -> None:
        """Plays one media item of `playback` to `target`; returns when it has played to the end: after the
        length of the file the simulator resolved for it (`playback.media_seconds`), else `playback_duration`."""
        seconds = playback.media_seconds if playback.media_seconds is not None else self.playback_duration(media_uri)
        if math.isinf(seconds):
            await asyncio.Event().wait()
        await asyncio.sleep(max(0.0, seconds))

    async def playback_finished(self, target: Target, playback: Playback) -> None:
        """`playback` has ended; its state says how (done, also when stopped; failed)."""

    async def recording_started(self, target: Target, recording: LiveRecording) -> None:
        """A recording of `target` has started (RecordingStarted was sent)."""

    async def recording_finished(self, recording: LiveRecording) -> None:
        """A recording has ended; its state says how (done, canceled)."""

    async def external_media_created(self, channel: Channel) -> None:
        """An externalMedia channel entered Stasis; `channel.media` holds its bound local UDP socket."""

    async def external_media_destroyed(self, channel: Channel) -> None:
        """An externalMedia channel is gone; its socket is closed once this returns."""

    async def channel_entered_bridge(self, channel: Channel, bridge: Bridge) -> None:
        """`channel` joined `bridge` (ChannelEnteredBridge was sent)."""

    async def channel_left_bridge(self, channel: Channel, bridge: Bridge) -> None:
        """`channel` left `bridge` (ChannelLeftBridge was sent)."""


class MediaEngine:
    """All playbacks and recordings, their queues, and the events they produce."""

    def __init__(
        self,
        hub: EventHub,
        hooks: MediaHooks,
        sounds: SoundLibrary,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self.hub = hub
        self.hooks = hooks
        self.sounds = sounds
        self.spawn = spawn
        self._failures: list[ForcedFailure] = []
        self.playbacks: dict[str, Playback] = {}
        self.live_recordings: dict[str, LiveRecording] = {}
        self.stored_recordings: dict[str, StoredRecording] = {}
        self._queues: dict[str, MediaQueue] = {}  # by target uri
        self._queue_of: dict[Playback | LiveRecording, MediaQueue] = {}

    def queue(self, target: Target) -> MediaQueue:
        uri = target_uri(target)
        if uri not in self._queues:
            self._queues[uri] = MediaQueue(self, target)
        return self._queues[uri]

    def fail_playbacks(self, match: Callable[[str], bool], times: int = 1) -> None:
        """The next `times` media items whose URI matches fail as a broken file does."""
        if times > 0:
            self._failures.append(ForcedFailure(match, times))

    def _forced_failure(self, media_uri: str) -> bool:
        for failure in self._failures:
            if failure.match(media_uri):
                failure.left -= 1
                if failure.left <= 0:
                    self._failures.remove(failure)
                return True
        return False

    def check_media(self, target: Target, playback: Playback) -> MediaCheck:
        """Whether the current media item of `playback` plays, fails or is dropped (and, for a file the
        sounds library resolved, for how long: `playback.media_seconds`)."""
        media_uri = playback.media_uri
        playback.media_seconds = None
        if self._forced_failure(media_uri):
            return MediaCheck.MISSING
        scheme, _, rest = media_uri.partition(":")
        if scheme == "sound":
            # A bridge plays through its announcer channel, which Asterisk creates in 8 kHz slin.
            native = target.native_format if isinstance(target, Channel) else "slin"
            found = self.sounds.lookup(rest, playback.language, native)
            playback.media_seconds = found.seconds
            return MediaCheck.PLAYABLE if found.playable else MediaCheck.MISSING
        if scheme == "recording":
            return MediaCheck.PLAYABLE if rest in self.stored_recordings else MediaCheck.UNPLAYABLE
        if scheme == "number":
            return MediaCheck.PLAYABLE if rest.strip().lstrip("+-").isdigit() else MediaCheck.UNPLAYABLE
        if scheme in ("digits", "characters", "tone"):
            return MediaCheck.PLAYABLE
        return MediaCheck.UNPLAYABLE

    # --- playbacks -----------------------------------------------------------------------------
    def play(self, target: Target, media_uris: list[str], language: str, playback_id: str) -> Playback:
        playback = Playback(playback_id, list(media_uris), target_uri(target), language)
        self.playbacks[playback.id] = playback
        queue = self.queue(target)
        self._queue_of[playback] = queue
        queue.enqueue(playback)
        return playback

    def stop_playback(self, playback_id: str) -> None:
        playback = self.playbacks.get(playback_id)
        if playback is None:
            raise AriError(404, "Not Found", "Playback not found")
        if not self._queue_of[playback].stop(playback):
            raise AriError(500, "Internal Server Error", "Could not stop playback")

    def finish_media(self, playback_id: str) -> None:
        """Ends the current media item of a playing playback as if it had played to its end."""
        playback = self.playbacks.get(playback_id)
        if playback is None or playback.state is not PlaybackState.PLAYING:
            raise KeyError(f"playback {playback_id!r} is not playing")
        self._queue_of[playback].finish_media(playback)

    def publish_playback(self, queue: MediaQueue, playback: Playback, event_type: str, state: PlaybackState) -> None:
        self.hub.emit(queue.apps(), event_type, {"playback": playback.to_json(state)})

    def end_playback(self, queue: MediaQueue, playback: Playback, state: PlaybackState) -> None:
        playback.state = state
        playback.cancelled = False
        self.publish_playback(queue, playback, "PlaybackFinished", state)
        self.forget(playback)
        self.spawn(self.hooks.playback_finished(queue.target, playback))

    def forget(self, item: Playback | LiveRecording) -> None:
        self._queue_of.pop(item, None)
        if isinstance(item, Playback):
            if self.playbacks.get(item.id) is item:
                del self.playbacks[item.id]
        elif self.live_recordings.get(item.name) is item:
            del self.live_recordings[item.name]

    # --- recordings ----------------------------------------------------------------------------
    def record(self, target: Target, name: str, file_format: str, if_exists: str,
               max_seconds: int) -> tuple[LiveRecording, dict[str, Any]]:
        """The new recording, and its snapshot from before it was queued: the reply always says "queued"
        (the traces), even when RecordingStarted follows at once."""
        # stasis_app_control_record(): EINVAL, EPERM and EEXIST, answered as resource_channels.c does.
        if not name or not file_format:
            raise AriError(500, "Internal Server Error", "Error parsing request")
        if ".." in name.split("/") or name.startswith("/"):
            raise AriError(400, "Bad Request", "Recording name invalid")
        if name in self.live_recordings or (if_exists == "fail" and name in self.stored_recordings):
            raise AriError(409, "Conflict", f"Recording '{name}' already exists and can not be overwritten")
        recording = LiveRecording(name, file_format, target_uri(target), max_seconds)
        self.live_recordings[name] = recording
        snapshot = recording.to_json()
        queue = self.queue(target)
        self._queue_of[recording] = queue
        queue.enqueue(recording)
        return recording, snapshot

    def stop_recording(self, name: str, state: RecordingState) -> None:
        recording = self.live_recordings.get(name)
        if recording is None:
            raise AriError(404, "Not Found", "Recording not found")
        self._queue_of[recording].stop_recording(recording, state)

    def end_recording(self, queue: MediaQueue, recording: LiveRecording, state: RecordingState) -> None:
        recording.state = state
        if state is RecordingState.DONE:
            started = recording.started_at if recording.started_at is not None else time.monotonic()
            recording.duration = int(time.monotonic() - started)
            self.stored_recordings[recording.name] = StoredRecording(recording.name, recording.format)
        self.hub.emit(queue.apps(), "RecordingFinished", {"recording": recording.to_json()})
        self.forget(recording)
        self.spawn(self.hooks.recording_finished(recording))

    def abort(self, target: Target) -> None:
        """The target is going away: end what runs, flush what waits (see the module docstring)."""
        queue = self._queues.pop(target_uri(target), None)
        if queue is not None:
            queue.abort()


def target_uri(target: Target) -> str:
    return f"channel:{target.id}" if isinstance(target, Channel) else f"bridge:{target.id}"


class MediaQueue:
    """One target's command queue: a playback or recording runs at a time, the others wait in order."""

    def __init__(self, engine: MediaEngine, target: Target) -> None:
        self.engine = engine
        self.target = target
        self.pending: deque[Playback | LiveRecording] = deque()
        self.current: Playback | LiveRecording | None = None
        self._task: asyncio.Task[None] | None = None

    def apps(self) -> list[str | None]:
        """Where this target's playback and recording events go."""
        if isinstance(self.target, Channel):
            return [self.target.app]
        return [*sorted(self.target.apps)]

    def enqueue(self, item: Playback | LiveRecording) -> None:
        self.pending.append(item)
        if self.current is None:
            self._advance()

    def _advance(self) -> None:
        while self.current is None and self.pending:
            item = self.pending.popleft()
            if isinstance(item, LiveRecording):
                self._begin_recording(item)
            elif item.cancelled:
                self.engine.end_playback(self, item, PlaybackState.DONE)
            else:
                self.current = item
                item.state = PlaybackState.PLAYING
                self.engine.publish_playback(self, item, "PlaybackStarted", PlaybackState.PLAYING)
                self._task = self.engine.spawn(self._play_item(item))

    def _release(self, item: Playback | LiveRecording) -> None:
        if self.current is item:
            self.current = None
            self._task = None
            self._advance()

    def _cancel_task(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None

    # --- playbacks -----------------------------------------------------------------------------
    async def _play_item(self, playback: Playback) -> None:
        check = self.engine.check_media(self.target, playback)
        if check is MediaCheck.UNPLAYABLE:
            log.warning("unplayable media dropped", extra={"playback": playback.id, "media": playback.media_uri})
            self.engine.forget(playback)
            self._release(playback)
            return
        if check is MediaCheck.MISSING:
            log.warning("res_stasis_playback.c: %s: Playback failed for %s", self.target.id, playback.media_uri)
            if playback.media_index + 1 < len(playback.media_uris):
                self._item_played(playback)  # a failed item that is not the last: the list goes on
                return
            self.engine.end_playback(self, playback, PlaybackState.FAILED)
            self._release(playback)
            return
        try:
            await self.engine.hooks.play_media(self.target, playback, playback.media_uri)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A broken hook must not wedge the queue: the playback fails as a broken file would.
            log.exception("play_media hook failed", extra={"playback": playback.id})
            self.engine.end_playback(self, playback, PlaybackState.FAILED)
            self._release(playback)
            return
        self._item_played(playback)

    def _item_played(self, playback: Playback) -> None:
        if playback.media_index + 1 < len(playback.media_uris):
            self.engine.publish_playback(self, playback, "PlaybackContinuing", PlaybackState.CONTINUING)
            playback.media_index += 1
            self.engine.publish_playback(self, playback, "PlaybackStarted", PlaybackState.PLAYING)
            self._task = self.engine.spawn(self._play_item(playback))
            return
        self.engine.end_playback(self, playback, PlaybackState.DONE)
        self._release(playback)

    def stop(self, playback: Playback) -> bool:
        if playback in self.pending:
            playback.cancelled = True
            return True
        if playback is not self.current:
            return True
        if not playback.media_uri.startswith(STOPPABLE_SCHEMES):
            return False
        self._cancel_task()
        self.engine.end_playback(self, playback, PlaybackState.DONE)
        self._release(playback)
        return True

    def finish_media(self, playback: Playback) -> None:
        if playback is self.current:
            self._cancel_task()
            self._item_played(playback)

    # --- recordings ----------------------------------------------------------------------------
    def _begin_recording(self, recording: LiveRecording) -> None:
        self.current = recording
        recording.state = RecordingState.RECORDING
        recording.started_at = time.monotonic()
        self.engine.hub.emit(self.apps(), "RecordingStarted", {"recording": recording.to_json()})
        self.engine.spawn(self.engine.hooks.recording_started(self.target, recording))
        if recording.max_duration_seconds > 0:
            self._task = self.engine.spawn(self._record_for(recording, recording.max_duration_seconds))

    async def _record_for(self, recording: LiveRecording, seconds: int) -> None:
        await asyncio.sleep(seconds)
        self.stop_recording(recording, RecordingState.DONE)

    def stop_recording(self, recording: LiveRecording, state: RecordingState) -> None:
        if recording in self.pending:
            # Stopped before its turn: it never records, so it ends at once and leaves no file.
            self.pending.remove(recording)
            self.engine.end_recording(self, recording, RecordingState.CANCELED)
            return
        if recording is self.current:
            self._cancel_task()
            self.engine.end_recording(self, recording, state)
            self._release(recording)

    def abort(self) -> None:
        self._cancel_task()
        current, self.current = self.current, None
        if isinstance(current, Playback):
            # streamfile interrupted by the hang-up: Asterisk logs it and reports the playback failed.
            log.info("res_stasis_playback.c: %s: Playback failed for %s", self.target.id, current.media_uri)
            self.engine.end_playback(self, current, PlaybackState.FAILED)
        elif isinstance(current, LiveRecording):
            self.engine.end_recording(self, current, RecordingState.DONE)
        while self.pending:
            self.engine.forget(self.pending.popleft())
