from __future__ import annotations

import time
from typing import Callable

from rtcore.audio import float_to_pcm16, load_audio
from rtcore.bus import Publisher, Subscriber
from rtcore.config import Settings
from rtcore.messages import CallStarted, SpeechStarted, UtteranceReady
from rtcore.supervisor import ProcessSpec, Supervisor
from tests.conftest import require_shared_audio


def test_vad_process_cuts_a_calls_audio_from_the_ring(make_settings: Callable[..., Settings]) -> None:
    pcm = float_to_pcm16(load_audio(require_shared_audio("leopard_test_fr.wav")))
    settings = make_settings(redis_url="redis://127.0.0.1:1", ring_seconds=30.0)
    sup = Supervisor(settings, [ProcessSpec("vad", "procs.vad")])
    sup.start()
    pub = Publisher(settings.endpoint("bus_pub"))
    sub = Subscriber(settings.endpoint("bus_sub"), [SpeechStarted, UtteranceReady])
    try:
        assert sup.rings is not None
        lease = sup.rings.allocate()
        sup.rings.write(lease, pcm)
        announce = CallStarted(call_id="c1", slot=lease.slot, generation=lease.generation)
        got: list[object] = []
        deadline = time.monotonic() + 60
        # Re-announce until the VAD answers: PUB/SUB drops what precedes the subscription, and a
        # repeated CallStarted is a no-op for the VAD.
        while not any(isinstance(m, UtteranceReady) for m in got):
            assert time.monotonic() < deadline, got
            pub.publish(announce)
            message = sub.recv(timeout_ms=200)
            if message is not None:
                got.append(message)
            sup.poll(0)
        ready = [m for m in got if isinstance(m, UtteranceReady)]
        assert len(ready) == 1 and ready[0].call_id == "c1"
        assert (ready[0].slot, ready[0].generation) == (lease.slot, lease.generation)
        assert 0 <= ready[0].start_sample < 16000 * 1.5 and ready[0].end_sample > 16000 * 5.5
        assert isinstance(got[0], SpeechStarted)
        assert sup.children["vad"].restarts == 0
    finally:
        pub.close()
        sub.close()
        sup.stop()
