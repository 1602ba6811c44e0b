from __future__ import annotations

import time
from collections.abc import Callable

from rtcore.runtime.audio import float_to_pcm16, load_audio
from rtcore.runtime.bus import Publisher, Subscriber
from rtcore.runtime.config import Settings
from rtcore.runtime.messages import CallStarted, SpeechStarted, UtteranceReady
from rtcore.runtime.supervisor import ProcessSpec, Supervisor
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
        announce = CallStarted(call_id="c1", slot=lease.slot, generation=lease.generation)
        vad = sup.children["vad"]
        deadline = time.monotonic() + 60
        # The VAD follows a call from what is being written when it learns of it: announce the
        # call (again and again: PUB/SUB drops what precedes the subscription; a repeat is a
        # no-op) while the caller is still silent, until the VAD reports following one call.
        while vad.metrics.get("calls", 0) < 1:
            assert time.monotonic() < deadline, "the VAD never took the call"
            pub.publish(announce)
            sup.rings.write_silence(lease, 512)
            sup.poll(0.032)
        offset = sup.rings.cursor(lease)
        sup.rings.write_silence(lease, 16000)
        offset += 16000
        sup.rings.write(lease, pcm)
        sup.rings.write_silence(lease, 16000)
        got: list[object] = []
        while not any(isinstance(m, UtteranceReady) for m in got):
            assert time.monotonic() < deadline, got
            message = sub.recv(timeout_ms=200)
            if message is not None:
                got.append(message)
            sup.poll(0)
        ready = [m for m in got if isinstance(m, UtteranceReady)]
        assert len(ready) == 1 and ready[0].call_id == "c1"
        assert (ready[0].slot, ready[0].generation) == (lease.slot, lease.generation)
        assert offset <= ready[0].start_sample < offset + 16000 * 1.5
        assert ready[0].end_sample > offset + 16000 * 5.5
        assert isinstance(got[0], SpeechStarted)
        assert sup.children["vad"].restarts == 0
    finally:
        pub.close()
        sub.close()
        sup.stop()
