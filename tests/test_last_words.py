"""A caller's last words: transcribed after the call ended, they still go into the lead."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rtcore.dialog.leads import Turn, read_leads
from tests.call_rig import Rig, until


@pytest.fixture
async def rig(short_dir: Path) -> AsyncIterator[Rig]:
    async with Rig(short_dir, barge_in=True, prompt_seconds=lambda uri: 0.02, no_input_s=5.0) as r:
        yield r


async def test_words_transcribed_after_the_hang_up_go_into_the_lead(rig: Rig) -> None:
    call_id = await rig.call()
    since = await rig.dialog(call_id, [("init", "Oui, allez-y."), ("ask_zip_code", "C'est le 75011.")])
    await rig.hears("ask_owner_house", since)
    # The caller answers and hangs up at once: the VAD cuts the answer at CallEnded, and its
    # transcript reaches the dialog after the call was closed.
    await rig.sim.hangup(call_id)
    closed = await rig.lead(call_id)
    assert closed.outcome == "abandoned" and not any(t.after_hangup for t in closed.turns)
    rig.heard(call_id, f"{call_id}-last", "Oui, je suis propriétaire.", eos_at=time.time() - 0.2)
    rig.heard(call_id, f"{call_id}-last", "Oui, je suis propriétaire.", eos_at=time.time() - 0.2)  # a duplicate
    rig.heard(call_id, f"{call_id}-noise", "", eos_at=time.time())  # nothing said: nothing recorded

    def last_words() -> list[Turn]:
        client = rig.redis_client()
        try:
            lead = next(lead for lead in read_leads(client)
                        if lead.call_id == call_id)
        finally:
            client.close()
        return [t for t in lead.turns if t.after_hangup]

    [turn] = await until(last_words)
    assert turn.transcript == "Oui, je suis propriétaire." and turn.intent == "ok_proprio"
    assert turn.utterance_id == f"{call_id}-last"
    assert rig.controller.counters["last_words"] == 1
    # The outcome stays what the call reached: nothing is played or decided after the end.
    lead = await rig.lead(call_id)
    assert lead.outcome == "abandoned" and lead.owner is None
