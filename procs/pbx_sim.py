"""Embedded PBX process (when no ari_url is set): the ARI simulator with RTP media and simulated
callers (rtcore.sim.callers), placing calls as `rtcore launch --calls/--total-calls/--duration` asks."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import uvloop

from rtcore.runtime.process import ProcessContext, run_process
from rtcore.sim.ari import AriSimulator
from rtcore.sim.callers.pbx import CallerMedia, CallerPbx, load_human_clips
from rtcore.sim.callers.phrasebook import load_phrasebook
from rtcore.sim.callers.prepare import SIM_CALLS_FILE, CallExpectations, calibration

log = logging.getLogger(__name__)
REPORT_EVERY_S = 1.0
HISTORY_LIMIT = 10_000  # events and requests the simulator keeps for inspection: bounded memory over hours


def human_audio_dir(configured: str) -> Path:
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "audio" / "fr"


async def serve(ctx: ProcessContext) -> None:
    s = ctx.settings
    # The simulator's own Asterisk sounds directory, where launch installed the prompts
    # (rtcore.sim.callers.prepare): playbacks find, pick and time their files there as Asterisk would.
    sounds_dir = s.sim_sounds_path
    if not sounds_dir.is_dir():
        log.warning("no sounds directory: every prompt will fail (run `rtcore prompts install --sounds-dir %s`)",
                    sounds_dir)
    media = CallerMedia(s.data_path / "recordings")
    sim = AriSimulator(app_name=s.ari_app, user=s.ari_user, password=s.ari_password.get_secret_value(), hooks=media,
                       sounds_dir=sounds_dir, history_limit=HISTORY_LIMIT, seed=s.sim_seed)
    phrasebook = load_phrasebook(s.model_cache_path / "phrasebook", calibration(s))
    # Each finished call's scenario and the lead it should have given, for `rtcore bench understanding`.
    expectations = CallExpectations(s.data_path / SIM_CALLS_FILE)
    scenarios = tuple(n.strip() for n in s.sim_scenarios.split(",") if n.strip())
    pbx = CallerPbx(sim, media, phrasebook, load_human_clips(human_audio_dir(s.sim_audio_dir)), seed=s.sim_seed,
                    codec=s.sim_caller_codec, scenarios=scenarios, on_call_end=expectations.write)
    await sim.start("127.0.0.1", s.sim_ari_port)
    ctx.ready()
    load: asyncio.Task[None] | None = None
    next_report = 0.0
    try:
        while not ctx.stopping.is_set():
            if load is None and s.sim_calls and sim.subscriber_count(s.ari_app) > 0:
                load = asyncio.get_running_loop().create_task(
                    pbx.run_load(s.sim_calls, s.sim_total_calls, s.sim_duration_s))
            await asyncio.sleep(0.1)
            if load is not None and load.done():
                load.result()  # re-raise a failure
            ctx.beat()
            now = time.monotonic()
            if now >= next_report:
                next_report = now + REPORT_EVERY_S
                ctx.report({"placed": float(pbx.placed), "active": float(len(pbx.calls)),
                            "finished": float(pbx.finished), "declined": float(pbx.declined),
                            "refused": float(pbx.refused),
                            "done": float(load is not None and load.done())})
    finally:
        if load is not None:
            load.cancel()
        await pbx.close()
        await sim.stop()


def main(ctx: ProcessContext) -> None:
    uvloop.run(serve(ctx))


if __name__ == "__main__":
    run_process(main)
