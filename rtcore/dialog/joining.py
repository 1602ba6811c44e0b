"""Turn continuation: when a caller pauses inside an answer, the two pieces are one turn.

The VAD ends an utterance after `silence_threshold` of silence (384 ms), so a natural pause inside an
answer ("Oui, [pause] je suis propriétaire.") cuts it in two. Measured on a real Asterisk: "Oui." was
then taken as the whole answer and the rest landed on the next question. So when the caller starts
speaking again within `window_s` of the last cut (before the bot's reply to it has been heard for
long: it comes about 300 ms after the cut), the new speech continues that utterance: the reply is
stopped and undone, and once the continuation's transcript arrives the two texts are understood
together, as one answer. A turn that is not continued costs nothing (it is answered at once); a
continued one is answered when its last piece is transcribed.

`TurnJoiner` is the bookkeeping for one call, pure (no I/O, no clock): the controller
(rtcore.dialog.turns) feeds it the VAD's cuts and speech starts and the ASR's transcripts, and it
says which transcripts to understand now, joined. Transcripts may arrive in either order with the
speech start that continues them (the ASR takes a few hundred ms).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from rtcore.runtime.messages import Transcript

CUTS_KEPT = 8


@dataclass
class TurnJoiner:
    window_s: float  # 0: never join
    cuts: list[tuple[str, float]] = field(default_factory=list)  # (utterance id, eos_at), latest last
    joining: str | None = None  # the utterance the caller's current speech continues
    held: dict[str, Transcript] = field(default_factory=dict)  # transcripts waiting for their continuation
    applied: str | None = None  # the last utterance whose transcript was understood (not continued yet)

    def cut(self, utterance_id: str, eos_at: float) -> None:
        """The VAD ended an utterance (UtteranceReady)."""
        self.cuts.append((utterance_id, eos_at))
        del self.cuts[:-CUTS_KEPT]

    def speech_started(self, at: float) -> str | None:
        """The caller speaks again at `at`: the utterance this continues, if it does. When that one
        was already understood (`applied`), the controller must undo its turn and `hold` it."""
        if self.window_s <= 0 or not self.cuts or self.joining is not None:
            return None
        utterance_id, eos_at = self.cuts[-1]
        if not 0.0 <= at - eos_at <= self.window_s:
            return None
        self.joining = utterance_id
        return utterance_id

    def hold(self, transcript: Transcript) -> None:
        """A transcript already understood, whose turn was undone: it waits for its continuation."""
        self.held[transcript.utterance_id] = transcript
        if self.applied == transcript.utterance_id:
            self.applied = None

    def transcript(self, transcript: Transcript) -> Transcript | None:
        """A transcript arrived: what to understand now (it, or it joined with the piece it goes
        with), or None to wait for the other piece."""
        if self.joining is None:
            return self._apply(transcript)
        self.held[transcript.utterance_id] = transcript
        first = self.held.get(self.joining)
        later = [t for key, t in self.held.items() if key != self.joining and not self._before(key, self.joining)]
        if first is None or not later:
            return None  # the other piece is still being transcribed
        self.joining = None
        self.held.clear()
        joined = first
        for piece in later:
            joined = join(joined, piece)
        return self._apply(joined)

    def give_up(self) -> Transcript | None:
        """The continuation never came (its speech was too short to be an utterance): understand
        what was held, alone."""
        self.joining = None
        if not self.held:
            return None
        pieces = list(self.held.values())
        self.held.clear()
        joined = pieces[0]
        for t in pieces[1:]:
            joined = join(joined, t)
        return self._apply(joined)

    def _apply(self, transcript: Transcript) -> Transcript:
        self.applied = transcript.utterance_id
        return transcript

    def _before(self, a: str, b: str) -> bool:
        order = [u for u, _ in self.cuts]
        return a in order and b in order and order.index(a) < order.index(b)


def join(first: Transcript, second: Transcript) -> Transcript:
    """One transcript of two pieces of a turn: their texts (a piece that is not speech adds none),
    timed from the end of the last one."""
    pieces = [t for t in (first, second) if t.text.strip() and not t.hallucination and not t.error]
    text = " ".join(t.text.strip() for t in pieces)
    return msgspec.structs.replace(second, text=text, hallucination=not pieces and second.hallucination,
                                   error="" if pieces else second.error)
